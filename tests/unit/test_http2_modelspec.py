"""gateway.transport.native_grpc.modelspec gives exactly gateway.core.wire's answers: generated
requests (specs in any position, repeated, malformed, with unknown fields and every wire type)
read and rewrite the same through the memo as through gateway.core.wire, first time and from the memo."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.wire import WireError, encode_varint, read_spec, rewrite_version
from gateway.transport.native_grpc.modelspec import SpecMemo, leading_spec_end


def _len(field: int, payload: bytes) -> bytes:
    return encode_varint(field << 3 | 2) + encode_varint(len(payload)) + payload


@st.composite
def specs(draw: st.DrawFn) -> bytes:
    parts = []
    if draw(st.booleans()):
        parts.append(_len(1, draw(st.sampled_from([b"half_plus_two", b"m", b""]))))
    choice = draw(st.sampled_from(["none", "version", "label", "both"]))
    if choice in ("version", "both"):
        parts.append(_len(2, b"\x08" + encode_varint(draw(st.integers(0, 2**40)))))
    if choice in ("label", "both"):
        parts.append(_len(4, draw(st.sampled_from([b"stable", b"canary"]))))
    if draw(st.booleans()):
        parts.append(_len(3, b"serving_default"))
    if draw(st.booleans()):
        parts.append(_len(9, draw(st.binary(max_size=5))))  # unknown field, kept
    order = draw(st.permutations(parts))
    return b"".join(order)


@st.composite
def other_field(draw: st.DrawFn) -> bytes:
    field = draw(st.integers(2, 20))
    wt = draw(st.sampled_from([0, 1, 2, 5]))
    tag = encode_varint(field << 3 | wt)
    if wt == 0:
        return tag + encode_varint(draw(st.integers(0, 2**63)))
    if wt == 1:
        return tag + struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    if wt == 5:
        return tag + struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
    return tag + encode_varint(n := draw(st.integers(0, 30))) + draw(st.binary(min_size=n,
                                                                             max_size=n))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.one_of(specs().map(lambda s: _len(1, s)), other_field()),
                           max_size=5))
    body = b"".join(fields)
    if draw(st.integers(0, 9)) == 0:  # now and then, damage it
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.binary(max_size=3))
    return body


def _wire_spec(body: bytes) -> object:
    try:
        return read_spec(body)
    except WireError:
        return None


def _wire_rewrite(body: bytes, version: int) -> object:
    try:
        return rewrite_version(body, version, model="half_plus_two")
    except WireError:
        return "error"


def _memo_rewrite(memo: SpecMemo, body: bytes, end: int, version: int) -> object:
    try:
        return memo.rewrite(body, end, version, False, "half_plus_two")
    except WireError:
        return "error"


@settings(max_examples=600, deadline=None)
@given(requests(), st.integers(0, 2**33))
def test_fuzz_memo_equals_wire(body: bytes, version: int) -> None:
    memo = SpecMemo()
    for _ in range(2):  # the second round answers from the memos
        spec, end = memo.spec(body, False)
        assert spec == _wire_spec(body)
        assert _memo_rewrite(memo, body, end, version) == _wire_rewrite(body, version)


def test_common_layout_is_recognised() -> None:
    spec = _len(1, b"half_plus_two") + _len(2, b"\x08\x02")
    body = _len(1, spec) + _len(2, b"inputs...") + _len(3, b"y")
    assert leading_spec_end(body) == len(_len(1, spec))
    assert leading_spec_end(body + _len(1, spec)) == -1  # a second spec: merged by wire
    assert leading_spec_end(_len(2, b"x") + _len(1, spec)) == -1  # not leading
