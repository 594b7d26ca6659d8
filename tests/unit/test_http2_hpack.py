"""gateway.transport.native_grpc.hpack against the hpack package as the reference: sequences of blocks (with
indexing, Huffman, table size changes) decode to what hpack.Decoder decodes, our encoding
decodes with hpack.Decoder, the memos replay correctly, the limits hold, and arbitrary bytes
only ever raise HpackError."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transport.native_grpc.hpack import (
    HeaderListTooLarge,
    HpackDecoder,
    HpackEncoder,
    HpackError,
    encode_field,
)

names = st.sampled_from([":method", ":path", ":status", "content-type", "te", "grpc-timeout",
                         "x-session-id", "user-agent", "server", "date", "x-custom-bin", "etag"])
values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
header_lists = st.lists(st.tuples(names, values), min_size=0, max_size=12)


def _ref_decode(dec: hpack.Decoder, block: bytes) -> tuple[tuple[str, str], ...]:
    return tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in dec.decode(block, raw=True))


def _b(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(header_lists, st.booleans(), st.sampled_from([None, 256, 4096, 0]))
                , max_size=12))
def test_fuzz_sequences_match_the_reference(blocks: list[tuple[list[tuple[str, str]], bool,
                                                                 int | None]]) -> None:
    enc = hpack.Encoder()
    ref = hpack.Decoder()
    ours = HpackDecoder()
    for headers, huffman, table_size in blocks:
        if table_size is not None:
            enc.header_table_size = table_size
        block = enc.encode(_b(headers), huffman=huffman)
        try:
            expected = _ref_decode(ref, block)
        except hpack.HPACKError:
            return  # hpack's own encoder and decoder disagree (its table resizing): no oracle
        assert ours.decode(block) == expected
        # The same bytes again (the memos' case): the outcome must match the reference's,
        # including an invalid index when the block's references went stale.
        again = _outcome(lambda b=block: _ref_decode(ref, b))
        assert _outcome(lambda b=block: ours.decode(b)) == again
        if again == "error":
            return
        assert ours.table_size <= 4096


def _outcome(fn: object) -> object:
    try:
        return fn()  # type: ignore[operator]
    except (hpack.HPACKError, HpackError):
        return "error"


def test_repeated_literal_blocks_replay_their_table_changes() -> None:
    # A block of literals with incremental indexing (as nginx sends), then an indexed block
    # that refers to what the literals added.
    enc = hpack.Encoder()
    ref = hpack.Decoder()
    ours = HpackDecoder()
    literal = b"".join(encode_with_indexing(n, v) for n, v in
                       [("server", "nginx"), ("date", "today"), ("etag", "e1")])
    indexed = bytes([0x80 | 62, 0x80 | 63, 0x80 | 64])
    for block in (literal, indexed, literal, literal, indexed, indexed):
        assert ours.decode(block) == _ref_decode(ref, block)
    assert ours.table_entries == len(ref.header_table.dynamic_entries)
    del enc


def encode_with_indexing(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return b"\x40" + bytes([len(n)]) + n + bytes([len(v)]) + v


@settings(max_examples=200, deadline=None)
@given(header_lists)
def test_fuzz_our_encoding_decodes_with_the_reference(headers: list[tuple[str, str]]) -> None:
    block = HpackEncoder().encode(headers)
    assert _ref_decode(hpack.Decoder(), block) == tuple(headers)
    # ... and never touches the peer's dynamic table.
    ref = hpack.Decoder()
    ref.decode(block, raw=True)
    assert len(ref.header_table.dynamic_entries) == 0


def test_static_exact_match_is_one_byte() -> None:
    assert encode_field(":status", "200") == b"\x88"
    assert encode_field(":method", "POST") == b"\x83"


def test_hpack_bomb_is_refused() -> None:
    # One 4,000-byte entry, then a block naming it 100 times: 400 kB from a 100-byte block.
    dec = HpackDecoder(max_list_size=65_536)
    dec.decode(b"\x40\x05x-big" + _len_prefixed(b"v" * 4000))
    with pytest.raises(HeaderListTooLarge):
        dec.decode(bytes([0x80 | 62]) * 100)


def _len_prefixed(raw: bytes) -> bytes:
    n = len(raw)
    if n < 127:
        return bytes([n]) + raw
    out = bytearray([127])
    n -= 127
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + raw


def test_table_size_update_above_the_advertised_limit_is_an_error() -> None:
    dec = HpackDecoder(max_table_size=4096)
    with pytest.raises(HpackError):
        dec.decode(b"\x3f\xe2\x1f")  # size update to 31 + 98 + (31 << 7) = 4097


def test_size_update_after_a_field_is_an_error() -> None:
    with pytest.raises(HpackError):
        HpackDecoder().decode(b"\x88\x20")


def test_invalid_index_is_an_error() -> None:
    with pytest.raises(HpackError):
        HpackDecoder().decode(bytes([0x80 | 70]))
    with pytest.raises(HpackError):
        HpackDecoder().decode(b"\x80")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_only_raise_hpack_errors(data: bytes) -> None:
    dec = HpackDecoder(max_list_size=4096)
    try:
        out = dec.decode(data)
    except HpackError:
        return
    assert sum(len(n) + len(v) + 32 for n, v in out) <= 4096
    assert dec.table_size <= 4096


def test_steady_replay_matches_the_reference_over_many_answers() -> None:
    # nginx's way: the same literal-with-indexing block for every answer. After the table
    # fills with copies the replay is skipped; indexed references must still resolve as the
    # reference decoder resolves them, including after a different block changes the table.
    ref = hpack.Decoder()
    ours = HpackDecoder()
    literal = b"".join(encode_with_indexing(n, v) for n, v in
                       [("server", "nginx"), ("date", "today"), ("etag", "e" * 50)])
    other = encode_with_indexing("x-other", "o" * 30)
    probe = bytes([0x80 | 62, 0x80 | 64, 0x80 | 70, 0x80 | 90])
    for i in range(200):
        block = other if i in (120, 121) else literal
        assert ours.decode(block) == _ref_decode(ref, block)
        if i % 7 == 0 or i in (120, 121, 122, 123):
            assert _outcome(lambda: ours.decode(probe)) == _outcome(lambda: _ref_decode(ref, probe))
    assert ours.table_entries == len(ref.header_table.dynamic_entries)
