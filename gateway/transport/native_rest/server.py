"""An HTTP/1.1 server on asyncio.Protocol and httptools (llhttp): one protocol object per client
connection, no streams, no per-request framework objects.

It owns framing only: request parsing, body limits, Expect: 100-continue, keep-alive, pipelining,
timeouts for slow clients and write backpressure. What a request means is the `RestApp`'s
business (gateway.transport.native_rest.ingress); this module never looks at paths or bodies.

What must always hold:
- answers leave in request order (HTTP/1.1 pipelining): at most one request of a connection is
  handled at a time; the next parsed requests wait in a short queue, and reading pauses while
  that queue is full or the socket's send buffer is;
- a body is never held past `max_body` bytes: a declared Content-Length over the limit is refused
  before any body byte is read, a chunked body the moment it crosses the limit (413, then close);
- a request head larger than `max_head` bytes, or a client that sends nothing useful for
  `header_timeout_s` / `body_timeout_s` / `idle_timeout_s`, loses its connection (431/408 first
  when no answer is pending);
- a connection that goes away cancels the request it was waiting for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import httptools

from gateway.transport.native_rest.cork import Cork, CorkedOutput
from gateway.transport.native_rest.http1 import (
    CONTINUE,
    INLINE_BODY,
    MAX_QUEUED,
    HttpRequest,
    RestApp,
    ServerLimits,
    encode_head,
)

log = logging.getLogger("infergate.fastrest")

class HttpServerProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: RestApp, limits: ServerLimits, cork: Cork | None = None) -> None:
        self._app = app
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer = ""  # the client's address
        # every byte to the client goes through here, in order (gateway.transport.native_rest.cork)
        self._out = CorkedOutput(cork or Cork(self._loop))
        self._parser = httptools.HttpRequestParser(self)
        # the request being parsed
        self._url = b""
        self._headers: dict[str, str] = {}
        self._nheaders = 0
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._in_message = False
        self._head_done = False
        self._expect_continue = False
        self._refused = False  # the current request was answered by the framing layer
        self._held = 0  # calls started (call_started) and not yet finished, on this connection
        # requests parsed and waiting, and the one being answered
        self._queue: deque[HttpRequest] = deque()
        self._active: asyncio.Task[None] | None = None
        self._closing = False
        self._write_paused = False
        self._read_paused = False
        # slow-client watchdog: `_progress` is bumped by every useful event and compared per tick
        self._progress = 0
        self._seen_progress = -1
        self._phase_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tick_s = max(0.05, min(5.0, limits.header_timeout_s / 2, limits.body_timeout_s / 2,
                                     limits.idle_timeout_s / 2))

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._out.attach(self._transport)
        self._phase_since = self._loop.time()
        self._timer = self._loop.call_later(self._tick_s, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._transport = None
        self._out.attach(None)
        self._release_all()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        if self._active is not None:
            self._active.cancel()  # nobody is left to answer: stop the upstream call too
            self._active = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._progress += 1
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "Protocol upgrades are not supported")
        except httptools.HttpParserCallbackError:
            if not self._refused:
                log.exception("HTTP parser callback failed")
                self._refuse(500, "Internal gateway error")
        except httptools.HttpParserError as exc:
            if not self._refused:
                self._refuse(400, f"Malformed HTTP request: {exc}")

    def eof_received(self) -> bool:
        # As nginx does (proxy_ignore_client_abort off): a client that closes its side while a
        # request is pending has gone away, and its upstream call is cancelled. Returning False
        # closes the transport, which runs connection_lost.
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._set_reading()

    # ---- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._nheaders = 0
        self._head_bytes = 0
        self._body = []
        self._body_len = 0
        self._in_message = True
        self._head_done = False
        self._expect_continue = False
        self._phase_since = self._loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_head:
            self._refuse(431, "Request header fields too large")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        self._nheaders += 1
        if self._head_bytes > self._limits.max_head or self._nheaders > self._limits.max_headers:
            self._refuse(431, "Request header fields too large")
            raise _Refused
        # The last value of a repeated header wins, as in the aiohttp ingress.
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._phase_since = self._loop.time()
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body:
            self._refuse(413, f"Request body of {length} bytes exceeds the limit of "
                              f"{self._limits.max_body} bytes")
            raise _Refused
        self._held += 1
        self._app.call_started()
        expect = self._headers.get("expect")
        if expect is not None and expect.lower() == "100-continue":
            self._expect_continue = True
            self._maybe_continue()

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._limits.max_body:
            self._refuse(413, f"Request body exceeds the limit of {self._limits.max_body} bytes")
            raise _Refused
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        parser = self._parser
        req = HttpRequest(parser.get_method().decode("ascii"), self._url.decode("latin-1"),
                          self._headers, body, parser.should_keep_alive(), self._peer)
        self._in_message = False
        self._expect_continue = False
        self._body = []
        self._phase_since = self._loop.time()
        if self._active is None:
            self._start(req)
        else:
            self._queue.append(req)
            if len(self._queue) >= MAX_QUEUED:
                self._set_reading()

    # ---- answering -----------------------------------------------------------------------

    def _start(self, req: HttpRequest) -> None:
        # Not gateway.core.tasks.spawn: this connection holds the task (`_active`) and `_answer`
        # handles its own failures, so the registry and done-callback would be per-request cost
        # for nothing.
        self._active = self._loop.create_task(self._answer(req))

    async def _answer(self, req: HttpRequest) -> None:
        try:
            status, headers, body = await self._app.handle(req)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error answering %s %s", req.method, req.target[:200])
            status, headers, body = self._app.reject(500, "Internal gateway error")
        self._active = None
        if self._transport is None:
            return
        self._progress += 1
        self._phase_since = self._loop.time()
        close = not req.keep_alive or self._closing or self._app.draining
        self._write(status, headers, body, req.method == "HEAD", close)
        if self._held:
            self._held -= 1
            self._app.call_finished()
        if close:
            self._close()
            return
        if self._queue:
            self._start(self._queue.popleft())
            self._set_reading()
        elif self._expect_continue:
            self._maybe_continue()

    def _write(self, status: int, headers: bytes, body: bytes, head_only: bool,
               close: bool) -> None:
        if self._transport is None:
            return
        send = self._out.send
        if status == 200 and not close and not head_only and 0 < len(body) <= INLINE_BODY:
            # The common answer, built in one formatting step: the same bytes as encode_head
            # followed by the body.
            send(b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (headers, len(body), body))
            return
        head = encode_head(status, headers, len(body), close)
        if head_only or not body:
            send(head)
        elif len(body) <= INLINE_BODY:
            send(head + body)
        else:
            send(head)
            send(body)

    def _maybe_continue(self) -> None:
        """Send 100 Continue for the request being parsed once every earlier answer is out."""
        if (self._expect_continue and self._in_message and self._active is None
                and not self._queue and self._transport is not None):
            self._expect_continue = False
            self._out.send(CONTINUE)

    def _refuse(self, status: int, message: str) -> None:
        """Answer from the framing layer and close: the request's remaining bytes are unread,
        so the connection cannot be reused."""
        if self._refused:
            return
        self._refused = True
        self._queue.clear()
        if self._active is not None:
            # An earlier request is still being answered; its answer would come after ours and
            # break ordering, so it is abandoned with the connection.
            self._active.cancel()
            self._active = None
        st, headers, body = self._app.reject(status, message)
        self._write(st, headers, body, False, True)
        self._release_all()
        self._close()

    def _release_all(self) -> None:
        while self._held:
            self._held -= 1
            self._app.call_finished()

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._out.flush()  # what is corked leaves before the close
            self._transport.close()

    def _set_reading(self) -> None:
        t = self._transport
        if t is None:
            return
        should_pause = self._write_paused or len(self._queue) >= MAX_QUEUED
        if should_pause and not self._read_paused:
            self._read_paused = True
            t.pause_reading()
        elif not should_pause and self._read_paused:
            self._read_paused = False
            t.resume_reading()

    # ---- slow clients --------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self._transport is None or self._closing:
            return
        now = self._loop.time()
        lim = self._limits
        if self._active is not None or self._queue:
            pass  # waiting on our own answer; the upstream deadline bounds it
        elif self._in_message and not self._head_done:
            if now - self._phase_since > lim.header_timeout_s:
                self._refuse(408, "Timed out reading the request head")
                return
        elif self._in_message:
            if self._progress == self._seen_progress and now - self._phase_since > lim.body_timeout_s:
                self._refuse(408, "Timed out reading the request body")
                return
            if self._progress != self._seen_progress:
                self._phase_since = now
        elif now - self._phase_since > lim.idle_timeout_s:
            t = self._transport
            if t.get_write_buffer_size():
                t.abort()  # a client that stopped reading our answers: nothing to wait for
            self._close()
            return
        self._seen_progress = self._progress
        self._timer = self._loop.call_later(self._tick_s, self._tick)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing once the request was refused; httptools
    hands it back wrapped in HttpParserCallbackError, which data_received then ignores."""

