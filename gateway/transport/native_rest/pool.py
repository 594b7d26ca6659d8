"""Keep-alive HTTP/1.1 connections to replicas, answers parsed with httptools.

One `UpstreamConnection` carries one request at a time (no pipelining upstream: a replica that
closes mid-pipeline would leave later requests in doubt). `HostPool` keeps idle connections per
address, most recently used first, so a quiet period lets the oldest ones age out.

What must always hold:
- a connection goes back to the idle list only after a complete answer that allows keep-alive;
  a timeout, a cancellation or a parse error closes it;
- a request that fails on a reused connection before any answer byte arrived (the replica closed
  the idle connection as we wrote) is sent once more on a fresh connection, because the replica
  cannot have acted on it; any other failure is `UpstreamError`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import cast

import httptools

from gateway.core.deadlines import DeadlineTimer
from gateway.transport.native_rest.cork import Cork, CorkedOutput


class UpstreamError(Exception):
    """The replica could not be reached or broke the connection."""


class ConnectError(UpstreamError):
    """The connection could not be opened: nothing of the request was sent."""


class UpstreamTimeout(Exception):
    """No complete answer within the time allowed."""


class UpstreamResponse:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a replica."""

    def __init__(self, relay: frozenset[str], cork: Cork | None = None) -> None:
        # Kept: on Python 3.11 each lookup of the running loop costs a getpid() system call.
        self.loop = asyncio.get_running_loop()
        # requests leave together with those of other connections (gateway.transport.native_rest.cork)
        self._out = CorkedOutput(cork or Cork(self.loop))
        self._timer = DeadlineTimer(self.loop, self._expire_due)
        self._deadline = 0.0  # of the request in progress
        self._relay = {k.encode("latin-1"): k for k in relay}
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._got_bytes = False
        self._head_only = False
        self._delimited = False  # the answer has a length or is chunked
        self._head_done = False
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        self._out.attach(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._transport = None
        self._out.attach(None)
        self._timer.cancel()
        w = self._waiter
        if w is None or w.done():
            return
        self._waiter = None
        if self._head_done and not self._delimited:
            # An answer delimited by the end of the connection is complete now.
            w.set_result(UpstreamResponse(self._parser.get_status_code(), self._headers,
                                          b"".join(self._body)))
            return
        w.set_exception(_Lost(self._got_bytes, exc))

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed answer from replica: {exc}"))

    def eof_received(self) -> bool:
        return False

    # ---- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []
        self._delimited = False
        self._head_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key == b"content-length" or key == b"transfer-encoding":
            self._delimited = True
        relayed = self._relay.get(key)
        if relayed is not None:
            self._headers.append((relayed, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._head_done = True
        if self._head_only and self._parser.get_status_code() >= 200:
            # An answer to HEAD has no body whatever its headers say; the parser cannot be told,
            # so finish here and never reuse the connection.
            self._finish(False)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return  # an interim answer (100 Continue): the real one follows
        self._finish(self._parser.should_keep_alive())

    # ---- requests ------------------------------------------------------------------------

    def send(self, data: bytes, body: bytes, head_only: bool,
             deadline: float) -> asyncio.Future[UpstreamResponse]:
        """Send a request; its answer, or UpstreamTimeout once `deadline` (time.monotonic())
        passes, arrives in the returned future."""
        t = self._transport
        assert t is not None and self._waiter is None
        fut: asyncio.Future[UpstreamResponse] = self.loop.create_future()
        self._waiter = fut
        self._deadline = deadline
        self._timer.arm(deadline)
        self._got_bytes = False
        self._head_only = head_only
        self.reusable = False
        if body and len(body) <= 65536:
            self._out.send(data + body)
        else:
            self._out.send(data)
            if body:
                self._out.send(body)
        return fut

    def _finish(self, keep_alive: bool) -> None:
        w = self._waiter
        self._waiter = None
        self.reusable = keep_alive and not self._head_only and not self.closed
        if w is not None and not w.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            w.set_result(UpstreamResponse(self._parser.get_status_code(), self._headers, body))
        if not self.reusable:
            self.close()

    def _expire_due(self, now: float) -> float | None:
        w = self._waiter
        if w is None or w.done():
            return None
        if self._deadline <= now:
            w.set_exception(UpstreamTimeout())
            return None
        return self._deadline

    def _fail(self, exc: Exception) -> None:
        w = self._waiter
        self._waiter = None
        if w is not None and not w.done():
            w.set_exception(exc)
        self.close()

    def abandon(self) -> None:
        """The caller gave up (timeout, cancellation): the answer can no longer be matched."""
        self._waiter = None
        self._out.attach(None)  # a request still corked is not sent at all
        self.close()

    def close(self) -> None:
        self.reusable = False
        self.closed = True
        self._timer.cancel()
        if self._transport is not None:
            self._out.flush()
            self._transport.close()


class _Lost(Exception):
    def __init__(self, got_bytes: bool, cause: Exception | None) -> None:
        super().__init__("connection closed by the replica")
        self.got_bytes = got_bytes
        self.cause = cause


class HostPool:
    """Idle keep-alive connections by replica address ("host:port")."""

    def __init__(self, relay: frozenset[str], idle_timeout_s: float = 30.0,
                 max_idle_per_host: int = 512, connect_timeout_s: float = 5.0) -> None:
        self._relay = relay
        self._idle: dict[str, deque[UpstreamConnection]] = {}
        self._idle_timeout = idle_timeout_s
        self._max_idle = max_idle_per_host
        self._connect_timeout = connect_timeout_s
        self._cork: Cork | None = None  # shared by this pool's connections; made on first use

    async def request(self, addr: str, head: bytes, body: bytes, timeout: float,
                      head_only: bool = False, may_resend: bool = True) -> UpstreamResponse:
        """Send one request and return its answer. `head` is the request line and headers."""
        deadline = time.monotonic() + timeout
        for attempt in (0, 1):
            conn, reused = self._idle_conn(addr)
            if conn is None:
                conn = await self._connect(addr, deadline - time.monotonic())
            fut = conn.send(head, body, head_only, deadline)
            try:
                resp = await fut
            except _Lost as lost:
                if reused and not lost.got_bytes and may_resend and attempt == 0:
                    continue  # the replica closed the idle connection under us
                raise UpstreamError("replica closed the connection") from None
            except BaseException:  # timeout, cancellation, a broken answer
                conn.abandon()
                raise
            if conn.reusable:
                self._release(addr, conn)
            return resp
        raise UpstreamError("replica closed the connection")  # not reached: attempt 1 raises

    def _idle_conn(self, addr: str) -> tuple[UpstreamConnection | None, bool]:
        q = self._idle.get(addr)
        if not q:
            return None, False
        cutoff = time.monotonic() - self._idle_timeout
        while q and q[0].idle_since < cutoff:  # oldest first: close those past the timeout
            q.popleft().close()
        while q:
            conn = q.pop()
            if not conn.closed:
                return conn, True
        return None, False

    def _release(self, addr: str, conn: UpstreamConnection) -> None:
        q = self._idle.get(addr)
        if q is None:
            q = self._idle[addr] = deque()
        if len(q) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        q.append(conn)

    async def _connect(self, addr: str, timeout: float) -> UpstreamConnection:
        host, _, port = addr.rpartition(":")
        loop = asyncio.get_running_loop()
        cork = self._cork
        if cork is None:
            cork = self._cork = Cork(loop)
        try:
            async with asyncio.timeout(max(0.001, min(timeout, self._connect_timeout))):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self._relay, cork), host.strip("[]"), int(port))
        except TimeoutError:
            if timeout <= self._connect_timeout:
                raise UpstreamTimeout() from None
            raise ConnectError(f"connect to {addr} timed out") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {addr}: {exc.strerror or exc}") from None
        return conn

    def close(self) -> None:
        for q in self._idle.values():
            while q:
                q.pop().close()
        self._idle.clear()

