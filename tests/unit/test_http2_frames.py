"""gateway.transport.native_grpc.frames: the reader against arbitrary splits and arbitrary bytes, padding and
priority fields, and the encoders' framing (CONTINUATION and DATA splitting)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transport.native_grpc import frames as f
from gateway.transport.native_grpc.frames import FrameReader, ProtocolError


def test_frames_survive_any_split() -> None:
    stream = (f.frame(f.HEADERS, f.END_HEADERS, 1, b"abc") + f.frame(f.DATA, f.END_STREAM, 1,
              b"x" * 100) + f.ping(b"12345678") + f.frame(f.DATA, 0, 3, b""))
    expected = FrameReader().feed(stream)
    assert [t for t, *_ in expected] == [f.HEADERS, f.DATA, f.PING, f.DATA]
    for cut in range(len(stream) + 1):
        r = FrameReader()
        got = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert got == expected
        assert r.buffered == 0


def test_reserved_bit_of_stream_id_is_ignored() -> None:
    raw = bytearray(f.frame(f.DATA, 0, 5, b"z"))
    raw[5] |= 0x80
    ((_, _, sid, payload),) = FrameReader().feed(bytes(raw))
    assert sid == 5 and payload == b"z"


def test_oversized_frame_is_refused_before_buffering() -> None:
    r = FrameReader(max_frame=16_384)
    head = f.frame_head(f.DATA, 0, 1, 16_385)
    with pytest.raises(ProtocolError) as exc:
        r.feed(head)  # only the 9-byte head: refused without waiting for the payload
    assert exc.value.code == f.FRAME_SIZE_ERROR


def test_padding_and_priority_are_stripped() -> None:
    payload = bytes([3]) + b"\x00\x00\x00\x00\x10" + b"block" + b"\x00" * 3
    assert f.headers_fragment(f.PADDED | f.PRIORITY_FLAG, payload) == b"block"
    with pytest.raises(ProtocolError):
        f.strip_padding(f.PADDED, bytes([9]) + b"short")
    with pytest.raises(ProtocolError):
        f.strip_padding(f.PADDED, b"")


def test_large_header_block_uses_continuation() -> None:
    block = bytes(range(256)) * 100  # 25,600 bytes
    raw = f.headers_frames(7, block, True, 16_384)
    parsed = FrameReader().feed(raw)
    assert [(t, fl) for t, fl, _, _ in parsed] == [(f.HEADERS, f.END_STREAM),
                                                   (f.CONTINUATION, f.END_HEADERS)]
    assert b"".join(p for *_, p in parsed) == block


def test_data_is_split_at_max_frame_with_end_stream_on_the_last() -> None:
    data = b"d" * 40_000
    parts = f.data_frames(1, data, True, 16_384)
    parsed = FrameReader(max_frame=16_384).feed(b"".join(bytes(p) for p in parts))
    assert [len(p) for *_, p in parsed] == [16_384, 16_384, 7_232]
    assert [fl for _, fl, _, _ in parsed] == [0, 0, f.END_STREAM]


def test_settings_and_goaway_round_trip() -> None:
    ((_, _, _, payload),) = FrameReader().feed(f.settings({f.INITIAL_WINDOW_SIZE: 1 << 20,
                                                           f.MAX_FRAME_SIZE: 16_384}))
    assert f.parse_settings(payload) == [(f.INITIAL_WINDOW_SIZE, 1 << 20),
                                         (f.MAX_FRAME_SIZE, 16_384)]
    with pytest.raises(ProtocolError):
        f.parse_settings(b"12345")
    ((_, _, _, payload),) = FrameReader().feed(f.goaway(9, f.ENHANCE_YOUR_CALM, b"why"))
    assert f.parse_goaway(payload) == (9, f.ENHANCE_YOUR_CALM, b"why")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_fuzz_reader_only_raises_protocol_errors(data: bytes, step: int) -> None:
    r = FrameReader(max_frame=512)
    frames: list[tuple[int, int, int, bytes]] = []
    try:
        for i in range(0, len(data), step):
            frames += r.feed(data[i:i + step])
    except ProtocolError as exc:
        assert exc.code == f.FRAME_SIZE_ERROR
        return
    consumed = sum(9 + len(p) for *_, p in frames)
    assert consumed + r.buffered == len(data)
    for ftype, flags, sid, payload in frames:
        assert 0 <= ftype <= 255 and 0 <= flags <= 255 and 0 <= sid < 2**31
        assert len(payload) <= 512


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 255), st.integers(0, 2**31 - 1),
                          st.binary(max_size=300)), max_size=20))
def test_fuzz_encode_then_read_is_identity(frames: list[tuple[int, int, int, bytes]]) -> None:
    raw = b"".join(f.frame(t, fl, sid, p) for t, fl, sid, p in frames)
    assert FrameReader(max_frame=300).feed(raw) == frames


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=64))
def test_fuzz_padding_never_crashes(flags: int, payload: bytes) -> None:
    try:
        out = f.headers_fragment(flags, payload)
    except ProtocolError:
        return
    assert len(out) <= len(payload)
