"""The TF Serving REST surface (port 8501): HTTP requests in, `Call`s to the pipeline, answers out.

Built on aiohttp's low-level server (no router, no middleware): the path is matched once with
TF Serving's own grammar (gateway.core.wire). Requests that are not routable model calls but lie under
/v1/ are passed through to a replica unchanged, so their errors are the replica's own.

What must always hold: every answer carries x-infergate-replica, x-infergate-version and
x-infergate-cache; an error is TF Serving's {"error": "..."} JSON; nothing leaks a stack trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_request import BaseRequest

from gateway.core.call import Answer, Call
from gateway.core.errors import GatewayError, PayloadTooLarge, rest_error_body
from gateway.transport.ingress import OWN_HEADERS, Ingress, answer_headers
from gateway.transport.rest_call import rest_call

log = logging.getLogger("infergate.rest")
JSON = "application/json"


class RestIngress:
    def __init__(self, ingress: Ingress, max_body: Callable[[], int]) -> None:
        self.ingress = ingress
        self._max_body = max_body  # read per call: a reload applies at once

    def server_logger(self) -> logging.Logger:
        """The logger to hand aiohttp's server. aiohttp logs every malformed request it refuses
        (BadHttpMessage, answered 400) as an ERROR with a traceback: a client's mistake, not
        the gateway's. Here such a record becomes one DEBUG line and a count in
        infergate_gateway_errors_total{protocol="rest"}, as on the native engine; anything else
        is logged as aiohttp logs it."""
        lg = logging.Logger("infergate.rest.server")
        lg.parent = logging.getLogger("infergate.rest")  # its handlers and level
        lg.addFilter(self._malformed)
        return lg

    def _malformed(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, BadHttpMessage):
            return True
        self.ingress.metrics.errors.labels("rest", "BadRequest").inc()
        log.debug("malformed request refused: %s", " ".join(str(exc.message).split())[:200])
        return False

    async def _read_body(self, request: BaseRequest, limit: int) -> bytes:
        length = request.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"Request body of {length} bytes exceeds the limit of {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(self, request: BaseRequest) -> web.StreamResponse:
        ingress = self.ingress
        ingress.call_started()
        try:
            resp = await self._handle(request)
        finally:
            ingress.call_finished()
        if ingress.draining:
            # A call that reaches a draining gateway on a kept-alive connection is served (the
            # drain waits for it); its answer closes the connection, so the client's next call
            # goes to another instance, as Envoy and nginx do.
            resp.force_close()
        return resp

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        t0 = time.monotonic()
        raw = request.raw_path
        path = raw.partition("?")[0]
        if not path.lower().startswith("/v1/"):
            return web.Response(status=404)  # TF Serving's plain, empty 404
        try:
            body = await self._read_body(request, self._max_body())
        except GatewayError as exc:
            self.ingress.refused(exc, None, t0)
            return _error(exc.http_status, exc.message)
        headers = {k.lower(): v for k, v in request.headers.items()}
        peer = request.remote or ""

        def build() -> Call:
            call = rest_call(request.method, raw, headers, body, t0)
            call.peer = peer
            return call

        result = await self.ingress.serve(build, t0)
        if isinstance(result, GatewayError):
            return _error(result.http_status, result.message, result.headers)
        return _answer(result)


def _error(status: int, message: str,
           extra: tuple[tuple[str, str], ...] = ()) -> web.Response:
    """An answer of the gateway itself: no replica, no version, never from the cache."""
    return web.Response(status=status, body=rest_error_body(message),
                        headers={"Content-Type": JSON, **dict(OWN_HEADERS), **dict(extra)})


def _answer(a: Answer) -> web.Response:
    headers = dict(a.headers)
    headers.update(answer_headers(a))
    return web.Response(status=a.status, body=a.body, headers=headers)
