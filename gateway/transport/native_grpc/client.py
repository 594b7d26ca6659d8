"""The client end of HTTP/2 connections to replicas: multiplexed streams, and a pool of
connections per address.

A request is a header block plus an optional body; its answer is the stream once the server
ends it (response headers, DATA, trailers). Failures say whether the server could have acted:
`Unprocessed` (a stream above the last id of the server's GOAWAY, or refused with
REFUSED_STREAM) is safe to send again on another connection; `StreamReset` and `ConnectionLost`
are not, unless the caller knows the call is idempotent.

What must always hold: a connection that received GOAWAY, ran out of stream ids or is at the
server's MAX_CONCURRENT_STREAMS takes no new stream, and the pool opens another one; only one
connect per address is in progress at a time.
"""

from __future__ import annotations

import asyncio

from gateway.core.deadlines import DeadlineTimer
from gateway.transport.native_grpc import frames as f
from gateway.transport.native_grpc.connection import H2Connection
from gateway.transport.native_grpc.frames import StreamError
from gateway.transport.native_grpc.hpack import Headers, HpackEncoder
from gateway.transport.native_grpc.stream import H2Limits, Stream

_LAST_STREAM_ID = 2**31 - 1


class Unprocessed(Exception):
    """The server did not process the stream; sending it again is safe."""


class StreamReset(Exception):
    def __init__(self, code: int, got_response: bool) -> None:
        super().__init__(f"stream reset by the server with code {code}")
        self.code = code
        self.got_response = got_response


class ConnectionLost(Exception):
    def __init__(self, got_response: bool) -> None:
        super().__init__("connection to the replica was lost")
        self.got_response = got_response


class DeadlineExpired(Exception):
    """The stream's deadline passed before its answer was complete."""


class BodyTooLarge(Exception):
    """The answer's DATA exceeded the limit; the stream was cancelled."""


class H2ClientConnection(H2Connection):
    is_client = True

    def __init__(self, limits: H2Limits, encoder: HpackEncoder, max_body: int) -> None:
        super().__init__(limits, encoder)
        self.next_stream_id = 1
        self.max_body = max_body
        self._deadlines = DeadlineTimer(self.loop, self._expire_due)

    def available(self) -> bool:
        return (not self.closed and self.goaway_received is None and not self.goaway_sent
                and self.next_stream_id < _LAST_STREAM_ID
                and (self.peer_max_streams is None or len(self.streams) < self.peer_max_streams))

    def _is_idle(self, sid: int) -> bool:
        return sid % 2 == 0 or sid >= self.next_stream_id

    def request(self, head_block: bytes, body: bytes | None, deadline: float) -> Stream:
        """Open a stream and send the request; `stream.waiter` resolves to the stream, or fails
        with DeadlineExpired once `deadline` (time.monotonic()) passes."""
        sid = self.next_stream_id
        self.next_stream_id += 2
        stream = Stream(sid, self.peer_initial_window)
        stream.waiter = self.loop.create_future()
        stream.deadline = deadline
        self._deadlines.arm(deadline)
        self.streams[sid] = stream
        head = f.headers_frames(sid, head_block, not body, self.peer_max_frame)
        self.send_frames(stream, head, body or None, None)
        return stream

    def _expire_due(self, now: float) -> float | None:
        due: list[Stream] = []
        nxt: float | None = None
        for stream in self.streams.values():
            w = stream.waiter
            if w is None or w.done():
                continue
            if stream.deadline <= now:
                due.append(stream)
            elif nxt is None or stream.deadline < nxt:
                nxt = stream.deadline
        for stream in due:  # outside the loop: a waiter's callbacks may touch `streams`
            stream.waiter.set_exception(DeadlineExpired())
        return nxt

    def cancel(self, stream: Stream) -> None:
        """The caller gave up on `stream` (deadline, cancellation): RST_STREAM(CANCEL)."""
        if stream.id in self.streams and not self.closed:
            self.reset_stream(stream.id, f.CANCEL)

    # ---- hooks --------------------------------------------------------------------------

    def _on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            self._unknown_stream_frame(sid, "HEADERS")
            return
        stream.got_response = True
        if not stream.headers:
            stream.headers = headers
            if end_stream:
                stream.trailers = headers  # trailers-only answer
        elif not end_stream:
            raise StreamError(sid, f.PROTOCOL_ERROR, "trailers without END_STREAM")
        else:
            stream.trailers = headers
        if end_stream:
            stream.remote_closed = True
            self._complete(stream)

    def _on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if not stream.headers:
            raise StreamError(stream.id, f.PROTOCOL_ERROR, "DATA before response headers")
        if data:
            stream.chunks.append(data)
            stream.size += len(data)
            if stream.size > self.max_body:
                waiter = stream.waiter
                self.reset_stream(stream.id, f.CANCEL)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(BodyTooLarge())
                return
        if end_stream:
            self._complete(stream)

    def _complete(self, stream: Stream) -> None:
        waiter = stream.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(stream)
        self._maybe_forget(stream)

    def _on_reset(self, stream: Stream, code: int, local: bool = False) -> None:
        waiter = stream.waiter
        if waiter is None or waiter.done():
            return
        if code == f.REFUSED_STREAM and not stream.got_response:
            waiter.set_exception(Unprocessed())
        else:
            waiter.set_exception(StreamReset(code, stream.got_response))

    def _on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        self.goaway_received = last_stream_id
        for sid in [s for s in self.streams if s > last_stream_id]:
            stream = self.streams.pop(sid)
            self._blocked.pop(sid, None)
            if stream.waiter is not None and not stream.waiter.done():
                stream.waiter.set_exception(Unprocessed())
        if not self.streams and self.transport is not None:
            self.closed = True
            self._flush()  # what the last streams wrote is still corked
            self.transport.close()

    def _on_closed(self, stream: Stream) -> None:
        if self.goaway_received is not None and not self.streams and self.transport is not None:
            self.closed = True
            self._flush()  # what the last streams wrote is still corked
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._deadlines.cancel()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            if stream.waiter is not None and not stream.waiter.done():
                stream.waiter.set_exception(ConnectionLost(stream.got_response))

    def close(self) -> None:
        if not self.closed:
            self.fail(f.NO_ERROR, "client closing")


class H2ClientPool:
    """Connections per replica address ("host:port")."""

    def __init__(self, limits: H2Limits, max_body: int, connect_timeout_s: float = 5.0) -> None:
        self.limits = limits
        self.max_body = max_body
        self.encoder = HpackEncoder()
        self.connect_timeout_s = connect_timeout_s
        self._conns: dict[str, list[H2ClientConnection]] = {}
        self._connecting: dict[str, asyncio.Future[H2ClientConnection]] = {}

    def ready(self, addr: str) -> H2ClientConnection | None:
        """An open connection that takes a new stream now, without waiting."""
        conns = self._conns.get(addr)
        if conns:
            for c in conns:
                if c.available():
                    return c
        return None

    async def connection(self, addr: str) -> H2ClientConnection:
        """An open connection that takes a new stream, connecting when there is none."""
        conns = self._conns.get(addr)
        if conns:
            for c in conns:
                if c.available():
                    return c
            live = [c for c in conns if not c.closed]
            if len(live) != len(conns):
                self._conns[addr] = conns = live
        pending = self._connecting.get(addr)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[H2ClientConnection] = asyncio.get_running_loop().create_future()
        self._connecting[addr] = fut
        try:
            conn = await self._connect(addr)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # marked retrieved: waiters get it re-raised, no warning if none
            raise
        finally:
            self._connecting.pop(addr, None)
        self._conns.setdefault(addr, []).append(conn)
        fut.set_result(conn)
        return conn

    async def _connect(self, addr: str) -> H2ClientConnection:
        host, _, port = addr.rpartition(":")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            _, proto = await loop.create_connection(
                lambda: H2ClientConnection(self.limits, self.encoder, self.max_body),
                host.strip("[]"), int(port))
        return proto

    def close(self) -> None:
        for conns in self._conns.values():
            for c in conns:
                c.close()
        self._conns.clear()
