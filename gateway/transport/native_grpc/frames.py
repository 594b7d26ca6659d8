"""HTTP/2 frames (RFC 9113 section 4 and 6): constants, one-call header parsing, encoders.

The reader splits a byte stream into frames with a single struct call per frame header and
never copies a payload more than once. Encoders return ready-to-write bytes.

What must always hold: a frame longer than the receiver's SETTINGS_MAX_FRAME_SIZE is refused
before its payload is buffered (FRAME_SIZE_ERROR); the reserved bit of the stream id is ignored
on receipt and never set on sending; padding is stripped and validated (PROTOCOL_ERROR when the
pad length covers the payload).
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (RFC 9113 section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, \
    ENHANCE_YOUR_CALM, INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = range(14)

# Settings identifiers (RFC 9113 section 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1
MAX_FRAME_LIMIT = 2**24 - 1

_HEAD = struct.Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, stream id
_U32 = struct.Struct(">L")
_U32X2 = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")


class ProtocolError(Exception):
    """A connection error: the connection ends with GOAWAY carrying `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamError(Exception):
    """A stream error: the stream is reset with RST_STREAM carrying `code`."""

    def __init__(self, stream_id: int, code: int, message: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.code = code


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def frame_head(ftype: int, flags: int, stream_id: int, length: int) -> bytes:
    return _HEAD.pack(length >> 8, length & 0xFF, ftype, flags, stream_id)


class FrameReader:
    """Accumulates bytes and yields complete frames as (type, flags, stream_id, payload)."""

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = b""
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        buf = self._buf + data if self._buf else data
        pos = 0
        end = len(buf)
        unpack = _HEAD.unpack_from
        max_frame = self.max_frame
        out: list[tuple[int, int, int, bytes]] = []
        while end - pos >= 9:
            hi, lo, ftype, flags, sid = unpack(buf, pos)
            length = hi << 8 | lo
            if length > max_frame:
                raise ProtocolError(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {max_frame}")
            stop = pos + 9 + length
            if stop > end:
                break
            out.append((ftype, flags, sid & 0x7FFFFFFF, buf[pos + 9:stop]))
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


def strip_padding(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload:
        raise ProtocolError(PROTOCOL_ERROR, "padded frame without pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolError(PROTOCOL_ERROR, "padding covers the whole frame")
    return payload[1:len(payload) - pad]


def headers_fragment(flags: int, payload: bytes) -> bytes:
    """The header block fragment of a HEADERS frame: padding and priority fields removed."""
    body = strip_padding(flags, payload)
    if flags & PRIORITY_FLAG:
        if len(body) < 5:
            raise ProtocolError(FRAME_SIZE_ERROR, "HEADERS priority fields truncated")
        body = body[5:]
    return body


# ---- encoders ---------------------------------------------------------------------------------

def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def parse_u32(payload: bytes, what: str) -> int:
    if len(payload) != 4:
        raise ProtocolError(FRAME_SIZE_ERROR, f"{what} payload must be 4 bytes")
    value: int = _U32.unpack(payload)[0]
    return value


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def ping(data: bytes, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, data)


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _U32X2.pack(last_stream_id, code) + debug)


def parse_goaway(payload: bytes) -> tuple[int, int, bytes]:
    if len(payload) < 8:
        raise ProtocolError(FRAME_SIZE_ERROR, "GOAWAY payload shorter than 8 bytes")
    last, code = _U32X2.unpack_from(payload)
    return last & 0x7FFFFFFF, code, payload[8:]


def headers_frames(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """A header block as HEADERS followed by CONTINUATION frames when it exceeds max_frame."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return frame(HEADERS, flags | END_HEADERS, stream_id, block)
    parts = [frame(HEADERS, flags, stream_id, block[:max_frame])]
    pos = max_frame
    while pos < len(block):
        chunk = block[pos:pos + max_frame]
        pos += max_frame
        parts.append(frame(CONTINUATION, END_HEADERS if pos >= len(block) else 0, stream_id, chunk))
    return b"".join(parts)


def data_frames(stream_id: int, data: bytes | memoryview, end_stream: bool,
                max_frame: int) -> list[bytes | memoryview]:
    """DATA frames carrying `data` (heads and memoryview slices, for writelines)."""
    n = len(data)
    if n <= max_frame:
        return [frame_head(DATA, END_STREAM if end_stream else 0, stream_id, n), data]
    out: list[bytes | memoryview] = []
    view = memoryview(data)
    pos = 0
    while pos < n:
        chunk = view[pos:pos + max_frame]
        pos += len(chunk)
        last = pos >= n
        out.append(frame_head(DATA, END_STREAM if (last and end_stream) else 0, stream_id,
                              len(chunk)))
        out.append(chunk)
    return out
