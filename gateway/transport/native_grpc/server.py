"""The server end of an HTTP/2 connection: client streams in, answers out, graceful drain.

A stream becomes a request when the client ends it (END_STREAM on HEADERS, DATA or trailers);
the `H2App` then answers it with `respond`. Graceful drain follows RFC 9113 section 6.8: a first
GOAWAY with the largest stream id and a PING, then, once the PING comes back (every stream the
client sent before it has arrived), a second GOAWAY naming the last stream that will be served.

What must always hold:
- the client preface is checked before anything else is read;
- at most `max_concurrent_streams` streams are open; further ones are refused (REFUSED_STREAM,
  which a client may retry) and a client that keeps trying is dropped;
- a stream the client resets, or a connection that closes, cancels the task answering it;
- after the final GOAWAY no new stream is served and the connection closes once its last
  stream is answered.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.transport.native_grpc import frames as f
from gateway.transport.native_grpc.connection import H2Connection
from gateway.transport.native_grpc.frames import ProtocolError, StreamError
from gateway.transport.native_grpc.hpack import Headers, HpackEncoder
from gateway.transport.native_grpc.stream import H2Limits, Stream

_DRAIN_PING = b"infgdrn\x00"
_DRAIN_PING_TIMEOUT_S = 1.0


class H2App(Protocol):
    max_body: int  # largest request body (DATA bytes) a stream may carry

    def call_started(self) -> None:
        """A stream opened: the call exists from now on (a drain waits for it)."""
        ...

    def call_finished(self) -> None:
        """A stream counted by call_started closed, was reset, or lost its connection."""
        ...

    def on_request(self, conn: H2ServerConnection, stream: Stream) -> None: ...

    def on_body_too_large(self, conn: H2ServerConnection, stream: Stream) -> None: ...


class H2ServerConnection(H2Connection):
    def __init__(self, app: H2App, limits: H2Limits, encoder: HpackEncoder,
                 registry: set[H2ServerConnection]) -> None:
        super().__init__(limits, encoder)
        self.app = app
        self.registry = registry
        self.peer = ""  # the client's address, once connected
        self._preface = b""
        self._preface_done = False
        self._final_goaway: int | None = None  # last stream id served after a drain

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.registry.add(self)

    def data_received(self, data: bytes) -> None:
        if not self._preface_done:
            self._preface += data
            if len(self._preface) < len(f.PREFACE):
                if not f.PREFACE.startswith(self._preface):
                    self.fail(f.PROTOCOL_ERROR, "invalid connection preface")
                return
            if not self._preface.startswith(f.PREFACE):
                self.fail(f.PROTOCOL_ERROR, "invalid connection preface")
                return
            data = self._preface[len(f.PREFACE):]
            self._preface = b""
            self._preface_done = True
            if not data:
                return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.registry.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            self.app.call_finished()
            if stream.handler is not None:
                stream.handler.cancel()

    def _is_idle(self, sid: int) -> bool:
        return sid % 2 == 0 or sid > self.highest_peer_stream

    # ---- streams ------------------------------------------------------------------------

    def _on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client
            if stream.remote_closed:
                raise StreamError(sid, f.STREAM_CLOSED, "HEADERS after END_STREAM")
            if not end_stream:
                raise StreamError(sid, f.PROTOCOL_ERROR, "trailers without END_STREAM")
            stream.trailers = headers
            stream.remote_closed = True
            self.app.on_request(self, stream)
            return
        if sid % 2 == 0:
            raise ProtocolError(f.PROTOCOL_ERROR, f"client opened even stream {sid}")
        if sid <= self.highest_peer_stream:
            if sid in self._recent_resets:
                return
            raise ProtocolError(f.PROTOCOL_ERROR, f"HEADERS on closed stream {sid}")
        self.highest_peer_stream = sid
        if self._final_goaway is not None:
            return  # above the last stream we promised to serve: ignored (RFC 9113 6.8)
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self._count_rate("_refused_count", self.limits.max_refused_per_s,
                             "streams beyond MAX_CONCURRENT_STREAMS")
            self.reset_stream(sid, f.REFUSED_STREAM)
            return
        stream = Stream(sid, self.peer_initial_window)
        stream.headers = headers
        self.streams[sid] = stream
        self.app.call_started()
        if end_stream:
            stream.remote_closed = True
            self.app.on_request(self, stream)

    def _on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if data:
            stream.chunks.append(data)
            stream.size += len(data)
            if stream.size > self.app.max_body:
                self.app.on_body_too_large(self, stream)
                return
        if end_stream:
            self.app.on_request(self, stream)

    def _on_reset(self, stream: Stream, code: int, local: bool = False) -> None:
        self.app.call_finished()
        if stream.handler is not None and not local:
            stream.handler.cancel()
        self._maybe_close_drained()

    def _on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        self.goaway_received = last_stream_id
        if code != f.NO_ERROR:
            self.fail(f.NO_ERROR, "peer sent GOAWAY with an error")

    def _on_closed(self, stream: Stream) -> None:
        self.app.call_finished()
        self._maybe_close_drained()

    # ---- answering ----------------------------------------------------------------------

    def respond(self, stream: Stream, head_block: bytes, data: bytes | None,
                trailer_block: bytes | None) -> None:
        """Answer `stream`: header block, optional DATA, optional trailing header block.
        Without DATA and trailers the header block ends the stream (gRPC trailers-only)."""
        if self.closed or stream.reset_code is not None or stream.local_closed:
            return
        mf = self.peer_max_frame
        head = f.headers_frames(stream.id, head_block, data is None and trailer_block is None, mf)
        trailers = f.headers_frames(stream.id, trailer_block, True, mf) if trailer_block else None
        self.send_frames(stream, head, data, trailers)
        if stream.local_closed and not stream.remote_closed:
            # Answered before the client finished sending: tell it to stop (RFC 9113 8.1).
            self.reset_stream(stream.id, f.NO_ERROR)

    # ---- graceful drain -----------------------------------------------------------------

    def drain(self) -> None:
        """Begin the two-step GOAWAY; idempotent."""
        if self.goaway_sent or self.closed:
            return
        self.goaway_sent = True
        self._write(f.goaway(f.MAX_WINDOW, f.NO_ERROR) + f.ping(_DRAIN_PING))
        self._flush()
        self.loop.call_later(_DRAIN_PING_TIMEOUT_S, self._final_drain)

    def _on_ping_ack(self, payload: bytes) -> None:
        if payload == _DRAIN_PING:
            self._final_drain()

    def _final_drain(self) -> None:
        if self._final_goaway is not None or self.closed:
            return
        self._final_goaway = self.highest_peer_stream
        self._write(f.goaway(self.highest_peer_stream, f.NO_ERROR))
        self._flush()
        self._maybe_close_drained()

    def _maybe_close_drained(self) -> None:
        if self._final_goaway is not None and not self.streams and self.transport is not None:
            self.closed = True
            self._flush()  # what the last streams wrote is still corked
            self.transport.close()
