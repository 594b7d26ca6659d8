"""HTTP/1.1 pieces of the native REST server that hold no connection state: status lines, the
request object, the answer tuple, the limits, the `RestApp` seam and head encoding.

What must always hold: a head is encoded with Content-Length (none for 1xx, 204, 304) and with
`Connection: close` exactly when the connection closes after it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

_REASONS: dict[int, bytes] = {
    100: b"Continue", 200: b"OK", 201: b"Created", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 409: b"Conflict", 413: b"Payload Too Large",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 499: b"Client Closed Request",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}
_STATUS_LINES: dict[int, bytes] = {}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_QUEUED = 16  # pipelined requests parsed ahead of the one being answered


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
        if 100 <= status <= 999:
            _STATUS_LINES[status] = line
    return line


@dataclass(slots=True)
class ServerLimits:
    """Read per request: the owner may change `max_body` in place (a config reload)."""

    max_body: int = 64 * 1024 * 1024
    max_head: int = 64 * 1024  # request line plus headers
    max_headers: int = 200
    header_timeout_s: float = 30.0  # from the first byte of a request to the end of its head
    body_timeout_s: float = 60.0  # longest pause between two pieces of a body
    idle_timeout_s: float = 75.0  # keep-alive connection with no request in progress


class HttpRequest:
    """One parsed request. `headers` has lower-case names; values are latin-1 decoded, so every
    byte the client sent survives a round trip through `str`."""

    __slots__ = ("method", "target", "headers", "body", "keep_alive", "peer")

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes,
                 keep_alive: bool, peer: str = "") -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.peer = peer


# status, header lines ("Name: value\r\n" each; no Content-Length, no Connection), body
Response = tuple[int, bytes, bytes]


class RestApp(Protocol):
    @property
    def draining(self) -> bool:
        """True once the server is going away: answers then close their connection, so
        keep-alive clients reconnect to another instance."""
        ...

    def call_started(self) -> None:
        """A request's head has arrived: the call exists from now on (a drain waits for it)."""
        ...

    def call_finished(self) -> None:
        """A call counted by call_started is answered, refused or lost with its connection."""
        ...

    def handle(self, request: HttpRequest) -> Awaitable[Response]: ...

    def reject(self, status: int, message: str) -> Response:
        """The answer to a request refused by the framing layer (413, 408, 431, 400)."""
        ...


INLINE_BODY = 65536  # bodies up to this size go out in the same write as the head


def header_lines(headers: list[tuple[str, str]]) -> bytes:
    """Encode (name, value) pairs as header lines; values are latin-1, as they were parsed."""
    return "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("latin-1")


def encode_head(status: int, lines: bytes, body_len: int, close: bool) -> bytes:
    if status < 200 or status in (204, 304):
        length = b""
    else:
        length = b"Content-Length: %d\r\n" % body_len
    return b"".join((status_line(status), lines, length,
                     b"Connection: close\r\n\r\n" if close else b"\r\n"))


