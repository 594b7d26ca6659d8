"""The TF Serving REST surface on the native HTTP/1.1 server: parsed requests in, `Call`s to the
pipeline, answers out. The same contract as gateway.transport.compat.rest_ingress (the
aiohttp one), request for request, so either engine can serve port 8501.

What must always hold: every answer of the pipeline carries x-infergate-replica,
x-infergate-version and x-infergate-cache; every error is TF Serving's {"error": "..."} JSON with
the status the error table gives; paths outside /v1/ get a plain 404; nothing leaks a stack trace.
"""

from __future__ import annotations

import logging
import time

from gateway.core.call import Answer
from gateway.core.errors import GatewayError, rest_error_body
from gateway.core.memo import BoundedMemo
from gateway.core.wire import RestTarget, parse_rest_path
from gateway.transport.ingress import Ingress
from gateway.transport.native_rest.http1 import HttpRequest, Response
from gateway.transport.rest_call import rest_call

log = logging.getLogger("infergate.rest")
# An answer of the gateway itself: no replica, no version, never from the cache.
_OWN = (b"Content-Type: application/json\r\nx-infergate-replica: \r\nx-infergate-version: \r\n"
        b"x-infergate-cache: miss\r\n")
_NOT_FOUND: Response = (404, b"", b"")  # TF Serving's plain, empty 404 outside /v1/
# Memo sizes: paths and (replica, version, cache) triples are few in practice; the bound only
# stops a client that varies them from growing memory (the memo is then simply cleared).
_MEMO_MAX = 512
_KIND = {400: "BadRequest", 408: "RequestTimeout", 413: "PayloadTooLarge",
         431: "HeadTooLarge", 500: "internal"}


class NativeRestIngress:
    """A `RestApp` for gateway.transport.native_rest.server."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress
        self._targets: BoundedMemo[tuple[str, str], RestTarget | None] = BoundedMemo(_MEMO_MAX)
        # answer header lines by (relayed headers, replica, version, cache)
        self._heads: BoundedMemo[tuple[tuple[tuple[str, str], ...], str, int | None, str, str],
                                 bytes] = BoundedMemo(_MEMO_MAX)

    def _target(self, method: str, path: str) -> RestTarget | None:
        """parse_rest_path, memoised: a regex match per request showed up in profiles."""
        key = (method, path)
        try:
            return self._targets[key]
        except KeyError:
            pass
        # parse_rest_path may raise BadRequest; that is not memoised.
        return self._targets.put(key, parse_rest_path(method, path))

    def encode_answer(self, a: Answer) -> Response:
        key = (tuple(a.headers), a.replica, a.version, a.cache, a.tier)
        lines = self._heads.get(key)
        if lines is None:
            version = "" if a.version is None else str(a.version)
            relayed = [f"{k}: {v}\r\n" for k, v in a.headers if not k.startswith("x-infergate-")]
            lines = self._heads.put(key, ("".join(relayed) +
                                          f"x-infergate-replica: {a.replica}\r\n"
                                          f"x-infergate-version: {version}\r\n"
                                          f"x-infergate-cache: {a.cache}\r\n"
                                          f"x-infergate-tier: {a.tier}\r\n").encode("latin-1"))
        return a.status, lines, a.body

    @property
    def draining(self) -> bool:
        return self.ingress.draining

    def call_started(self) -> None:
        self.ingress.call_started()  # the drain waits for calls whose body is still arriving

    def call_finished(self) -> None:
        self.ingress.call_finished()

    def reject(self, status: int, message: str) -> Response:
        self.ingress.metrics.errors.labels("rest", _KIND.get(status, str(status))).inc()
        return error(status, message)

    async def handle(self, request: HttpRequest) -> Response:
        t0 = time.monotonic()
        path = request.target.partition("?")[0]
        if not path[:4].lower() == "/v1/":
            return _NOT_FOUND
        try:
            call = rest_call(request.method, request.target, request.headers, request.body, t0,
                             self._target)
            call.peer = request.peer
        except GatewayError as exc:
            self.ingress.refused(exc, None, t0)
            return error(exc.http_status, exc.message)
        result = await self.ingress.answer(call, t0)
        if isinstance(result, GatewayError):
            return error(result.http_status, result.message, result.headers)
        return self.encode_answer(result)


def error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    lines = _OWN + "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1") if headers else _OWN
    return status, lines, rest_error_body(message)

