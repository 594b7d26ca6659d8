"""gateway.cache.entry: the binary value format round-trips and refuses anything else."""

from __future__ import annotations

import pytest

from gateway.cache.entry import Entry, MalformedEntry, decode_entry, encode_entry


@pytest.mark.parametrize(
    "entry",
    [
        Entry.make(200, {"content-type": "application/json"}, b'{"predictions": [2.5]}'),
        Entry(status=0, body=b"\x00\x01\xff" * 1000),
        Entry(status=204, body=b""),
        Entry.make(200, {"x-ünï": "välue", "a": ""}, b"body"),
    ],
)
def test_round_trip_is_exact(entry: Entry) -> None:
    assert decode_entry(encode_entry(entry)) == entry


def test_success_is_http_2xx_or_grpc_ok() -> None:
    assert Entry(200, b"").is_success and Entry(0, b"").is_success
    assert not Entry(404, b"").is_success
    assert not Entry(14, b"").is_success  # gRPC UNAVAILABLE
    assert not Entry(503, b"").is_success


@pytest.mark.parametrize(
    "data",
    [b"", b"IGc", b"XXc\x01\x00\xc8\x00", b"IGc\x02\x00\xc8\x00body", b"IGc\x01\x00\xc8\x01\x00\x05ab"],
)
def test_malformed_values_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedEntry):
        decode_entry(data)


def test_truncated_values_are_refused_at_every_cut() -> None:
    raw = encode_entry(Entry.make(200, {"content-type": "application/json"}, b""))
    for cut in range(len(raw)):
        with pytest.raises(MalformedEntry):
            decode_entry(raw[:cut])


def test_unencodable_entries_raise_value_error() -> None:
    with pytest.raises(ValueError):
        encode_entry(Entry(status=70000, body=b""))
