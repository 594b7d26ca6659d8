"""One HTTP/2 stream's state, and the limits a connection enforces.

What must always hold: a stream's send window may go negative (after the peer lowers
SETTINGS_INITIAL_WINDOW_SIZE) but no DATA is sent while it is not positive; `out` holds the
bytes of the stream's DATA not yet sent, and `out_trailers` its trailing HEADERS frames, which
leave only after `out` is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.transport.native_grpc.hpack import Headers


@dataclass(frozen=True, slots=True)
class H2Limits:
    """What one connection accepts. Defaults follow common server practice (nginx, Go, grpc)
    where they have one; the abuse limits answer the named attacks."""

    max_concurrent_streams: int = 1000  # advertised; streams beyond it get REFUSED_STREAM
    initial_window: int = 1 << 20  # advertised per-stream receive window
    connection_window: int = 16 << 20  # connection receive window
    max_frame_size: int = 16_384  # advertised; larger frames are FRAME_SIZE_ERROR
    max_header_list_size: int = 65_536  # advertised; decoded size (HPACK bomb)
    max_header_frames: int = 32  # HEADERS + CONTINUATION frames of one block (CONTINUATION flood)
    max_control_per_s: int = 1000  # PING, SETTINGS, PRIORITY, empty DATA (control floods)
    max_resets_per_s: int = 500  # RST_STREAM from the peer (rapid reset, CVE-2023-44487)
    max_refused_per_s: int = 100  # streams refused for exceeding the concurrency limit
    max_write_buffer: int = 64 << 20  # unread bytes queued to the peer before it is dropped


class Stream:
    """A stream as both ends of the gateway use it (server: a request; client: a response)."""

    __slots__ = ("id", "headers", "trailers", "chunks", "size", "remote_closed", "local_closed",
                 "send_window", "recv_unacked", "out", "out_end", "out_trailers", "handler",
                 "waiter", "got_response", "reset_code", "user", "deadline")

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.headers: Headers = ()
        self.trailers: Headers = ()
        self.chunks: list[bytes] = []
        self.size = 0  # DATA bytes received
        self.remote_closed = False
        self.local_closed = False
        self.send_window = send_window
        self.recv_unacked = 0
        self.out: memoryview | None = None  # DATA bytes waiting for window
        self.out_end = False  # END_STREAM goes with the last of `out`
        self.out_trailers: bytes | None = None  # encoded trailing HEADERS, after `out`
        self.handler: Any = None  # server: the task answering it
        self.waiter: Any = None  # client: the future waiting for its answer
        self.got_response = False  # client: any answer frame arrived
        self.reset_code: int | None = None
        self.user: Any = None  # what the layer above keeps per stream
        self.deadline = 0.0  # client: when its waiter fails with DeadlineExpired (monotonic)

    def body(self) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)
