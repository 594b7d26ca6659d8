"""gateway.transport.native_grpc.grpcwire: grpc-timeout both ways, grpc-message percent-encoding, binary
metadata, and the one-message rule of unary bodies (with gzip and its size limit)."""

from __future__ import annotations

import gzip
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.transport.native_grpc import grpcwire as g


def test_timeouts() -> None:
    assert g.parse_timeout("100m") == pytest.approx(0.1)
    assert g.parse_timeout("3S") == 3.0 and g.parse_timeout("2H") == 7200.0
    for bad in ("", "m", "123456789m", "10x", "-1S", "1.5S"):
        assert g.parse_timeout(bad) is None
    assert g.encode_timeout_ms(0.0101) == "11m"  # rounded up, never earlier
    assert g.encode_timeout(0.000_001_5) == "2u"


@given(st.floats(min_value=0, max_value=10**7, allow_nan=False))
def test_encoded_timeouts_parse_back_no_earlier(seconds: float) -> None:
    for enc in (g.encode_timeout(seconds), g.encode_timeout_ms(seconds)):
        back = g.parse_timeout(enc)
        assert back is not None and back >= seconds - 1e-9


@given(st.text(max_size=50))
def test_grpc_message_round_trip(message: str) -> None:
    enc = g.percent_encode(message)
    assert all(" " <= c <= "~" for c in enc)
    assert g.percent_decode(enc) == message


def test_binary_metadata_round_trip() -> None:
    for raw in (b"", b"\x00", b"\x00\x01\xff", bytes(range(256))):
        assert g.decode_bin(g.encode_bin(raw)) == raw


def test_unframe() -> None:
    assert g.unframe(g.frame_message(b"abc"), None, 10) == b"abc"
    with pytest.raises(g.MessageError) as exc:
        g.unframe(b"", None, 10)
    assert exc.value.code == g.INTERNAL
    with pytest.raises(g.MessageError):
        g.unframe(g.frame_message(b"abc")[:-1], None, 10)  # truncated
    with pytest.raises(g.MessageError) as exc:
        g.unframe(g.frame_message(b"a") + g.frame_message(b"b"), None, 10)
    assert exc.value.code == g.UNIMPLEMENTED  # two messages in a unary call
    packed = gzip.compress(b"x" * 100)
    compressed = struct.pack(">BL", 1, len(packed)) + packed
    assert g.unframe(compressed, "gzip", 1000) == b"x" * 100
    with pytest.raises(g.MessageError) as exc:
        g.unframe(compressed, "gzip", 50)
    assert exc.value.code == g.RESOURCE_EXHAUSTED
    with pytest.raises(g.MessageError) as exc:
        g.unframe(compressed, "snappy", 1000)
    assert exc.value.code == g.UNIMPLEMENTED
