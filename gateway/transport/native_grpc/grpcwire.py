"""gRPC over HTTP/2, the parts above framing (grpc/doc/PROTOCOL-HTTP2.md): message prefixes,
grpc-timeout, percent-encoded grpc-message, binary metadata, and the status tables for HTTP
statuses and RST_STREAM codes that carry no grpc-status.

What must always hold: a unary body is exactly one length-prefixed message; a compressed
message is inflated only for an encoding we know (gzip, deflate), and only up to the size limit.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib

from gateway.transport.native_grpc import frames as f

_PREFIX = struct.Struct(">BL")

# gRPC status codes.
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, \
    PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, \
    UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED = range(17)

# HTTP status of an answer without grpc-status -> gRPC code (PROTOCOL-HTTP2.md, http-grpc table).
HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}

# RST_STREAM code -> gRPC code (PROTOCOL-HTTP2.md, "Errors").
RST_TO_GRPC = {f.NO_ERROR: INTERNAL, f.PROTOCOL_ERROR: INTERNAL, f.INTERNAL_ERROR: INTERNAL,
               f.FLOW_CONTROL_ERROR: INTERNAL, f.SETTINGS_TIMEOUT: INTERNAL,
               f.FRAME_SIZE_ERROR: INTERNAL, f.REFUSED_STREAM: UNAVAILABLE, f.CANCEL: CANCELLED,
               f.COMPRESSION_ERROR: INTERNAL, f.CONNECT_ERROR: INTERNAL,
               f.ENHANCE_YOUR_CALM: RESOURCE_EXHAUSTED, f.INADEQUATE_SECURITY: PERMISSION_DENIED}

_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class MessageError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame_message(message: bytes) -> bytes:
    return _PREFIX.pack(0, len(message)) + message


def unframe(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The one message of a unary body. Raises MessageError with the code gRPC uses."""
    if len(body) < 5:
        raise MessageError(INTERNAL, "incomplete gRPC message" if body else
                           "missing request message")
    flag, length = _PREFIX.unpack_from(body)
    if len(body) != 5 + length:
        raise MessageError(INTERNAL if len(body) < 5 + length else UNIMPLEMENTED,
                           "message length does not match the body" if len(body) < 5 + length
                           else "more than one message in a unary call")
    message = body[5:]
    if flag == 0:
        return message
    if flag != 1:
        raise MessageError(INTERNAL, f"invalid message flag {flag}")
    if encoding in ("gzip", "deflate"):
        wbits = 31 if encoding == "gzip" else 15
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(message, limit + 1)
        except zlib.error as exc:
            raise MessageError(INTERNAL, f"failed to decompress the message: {exc}") from None
        if len(out) > limit:
            raise MessageError(RESOURCE_EXHAUSTED,
                               f"decompressed message larger than max ({limit})")
        return out
    raise MessageError(UNIMPLEMENTED if encoding else INTERNAL,
                       f"compressed message with unsupported encoding {encoding!r}")


def parse_timeout(value: str) -> float | None:
    """grpc-timeout ("1-8 digits" + H|M|S|m|u|n) in seconds; None when malformed."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def encode_timeout(seconds: float) -> str:
    """The most precise unit whose value fits in 8 digits (rounded up: never earlier)."""
    seconds = max(seconds, 0.0)
    for unit, scale in (("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        v = math.ceil(seconds * scale)
        if v < 100_000_000:
            return f"{v}{unit}"
    return "99999999H"


def encode_timeout_ms(seconds: float) -> str:
    """grpc-timeout in whole milliseconds, rounded up (seconds when that is too long)."""
    ms = math.ceil(max(seconds, 0.0) * 1000)
    return f"{ms}m" if ms < 100_000_000 else encode_timeout(seconds)


def percent_encode(message: str) -> str:
    """grpc-message encoding: bytes outside 0x20-0x7E and '%' as %XX of the UTF-8 encoding."""
    if all(" " <= c <= "~" and c != "%" for c in message):
        return message
    return "".join(c if " " <= c <= "~" and c != "%" else
                   "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in message)


def percent_decode(value: str) -> str:
    if "%" not in value:
        return value
    raw = value.encode("latin-1", "replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x25 and i + 2 < len(raw) and _is_hex(raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(b: bytes) -> bool:
    return len(b) == 2 and all(chr(x) in "0123456789abcdefABCDEF" for x in b)


def decode_bin(value: str) -> bytes:
    """A -bin metadata value (base64, padded or not)."""
    return base64.b64decode(value + "=" * (-len(value) % 4))


def encode_bin(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii").rstrip("=")
