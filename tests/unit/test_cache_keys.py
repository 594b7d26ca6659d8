"""gateway.cache.keys: canonical REST bodies share a key; every field of the call separates keys."""

from __future__ import annotations

import pytest

from gateway.cache.keys import KEY_BYTES, STDLIB_CANONICAL_LIMIT, cache_key, canonical_rest_body

BODY = b'{"signature_name": "serving_default", "instances": [{"x": 1.0, "y": [2, 3]}]}'


def rest(body: bytes, **kw: object) -> bytes:
    args: dict[str, object] = dict(
        model="m", version=1, signature="serving_default", method="predict", protocol="rest", body=body
    )
    args.update(kw)
    return cache_key(**args)  # type: ignore[arg-type]


def test_key_is_16_bytes_and_deterministic() -> None:
    assert len(rest(BODY)) == KEY_BYTES
    assert rest(BODY) == rest(BODY)


@pytest.mark.parametrize(
    "variant",
    [
        b'{"instances":[{"y":[2,3],"x":1.0}],"signature_name":"serving_default"}',
        b'{\n  "instances" : [ { "x" : 1.0 , "y" : [ 2 , 3 ] } ],\n  "signature_name":"serving_default"\n}\n',
        b'{"signature_name": "serving_default", "instances": [{"x": 1.00, "y": [2, 3]}]}',
        b'{"signature_name": "serving_default", "instances": [{"x": 1e0, "y": [2, 3]}]}',
    ],
)
def test_rest_key_order_whitespace_and_number_spelling_do_not_matter(variant: bytes) -> None:
    assert rest(variant) == rest(BODY)


def test_rest_values_and_list_order_matter() -> None:
    assert rest(b'{"instances": [1.0, 2.0]}') != rest(b'{"instances": [2.0, 1.0]}')
    assert rest(b'{"instances": [1.0]}') != rest(b'{"instances": [1.5]}')
    assert rest(b'{"instances": [1]}') != rest(b'{"instances": [1.0]}')  # int vs float: kept apart


def test_nan_and_infinity_bodies_are_canonicalised_by_the_stdlib_path() -> None:
    a = b'{"instances": [NaN, Infinity, -Infinity], "signature_name": "s"}'
    b = b'{ "signature_name":"s",  "instances":[NaN,Infinity,-Infinity] }'
    assert canonical_rest_body(a)[0] == b"S"
    assert rest(a) == rest(b)
    assert rest(a) != rest(b'{"instances": [NaN, Infinity, Infinity], "signature_name": "s"}')


def test_lone_surrogate_escapes_use_the_stdlib_path() -> None:
    a = b'{"instances": ["\\ud800"], "k": 1}'
    assert canonical_rest_body(a)[0] == b"S"
    assert rest(a) == rest(b'{"k":1,"instances":["\\ud800"]}')
    assert rest(a) != rest(b'{"instances": ["\\ud801"], "k": 1}')


def test_huge_integers_are_kept_apart_as_far_as_a_double_tells_them_apart() -> None:
    # TF Serving reads integers past 64 bits as doubles (and refuses them for integer tensors).
    a = b'{"instances": [123456789012345678901234567890]}'
    assert rest(a) == rest(b'{ "instances" : [123456789012345678901234567890] }')
    assert rest(a) != rest(b'{"instances": [223456789012345678901234567890]}')
    # Within 64 bits integers stay exact.
    assert rest(b'{"instances": [9007199254740993]}') != rest(b'{"instances": [9007199254740992]}')


def test_large_bodies_needing_the_slow_parser_hash_raw_bytes() -> None:
    body = b'{"instances": [NaN' + b", 1.0" * (STDLIB_CANONICAL_LIMIT // 5) + b"]}"
    assert canonical_rest_body(body)[0] == b"R"
    assert rest(body) != rest(body.replace(b"[NaN", b"[ NaN"))


def test_non_json_and_oversized_bodies_hash_raw_bytes() -> None:
    assert canonical_rest_body(b"not json {")[0] == b"R"
    assert canonical_rest_body(b"")[0] == b"R"
    assert rest(b"not json {") != rest(b"not json  {")
    big_a = b'{"a": 1, "b": 2}'
    big_b = b'{"b": 2, "a": 1}'
    assert cache_key("m", 1, "", "predict", "rest", big_a, canonical_limit=4) != cache_key(
        "m", 1, "", "predict", "rest", big_b, canonical_limit=4
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", "m2"),
        ("version", 2),
        ("signature", ""),
        ("signature", "other"),
        ("method", "classify"),
        ("protocol", "grpc"),
    ],
)
def test_every_field_separates_keys(field: str, value: object) -> None:
    assert rest(BODY, **{field: value}) != rest(BODY)


def test_length_prefixes_keep_fields_apart() -> None:
    # Same concatenation of model + signature, split differently.
    assert cache_key("ab", 1, "c", "predict", "grpc", b"") != cache_key("a", 1, "bc", "predict", "grpc", b"")


def test_grpc_bodies_are_hashed_raw() -> None:
    a = cache_key("m", 1, "", "predict", "grpc", b"\x0a\x03\x0a\x01m")
    b = cache_key("m", 1, "", "predict", "grpc", b"\x0a\x03\x0a\x01n")
    assert a != b
    # A JSON-looking gRPC body is not canonicalised.
    assert cache_key("m", 1, "", "predict", "grpc", b'{"a":1,"b":2}') != cache_key(
        "m", 1, "", "predict", "grpc", b'{"b":2,"a":1}'
    )


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="protocol"):
        cache_key("m", 1, "", "predict", "http", b"")
