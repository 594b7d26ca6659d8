"""The TF Serving gRPC surface (port 8500): raw request bytes in, raw answer bytes out.

Generic handlers receive every method of PredictionService and ModelService without
deserialising: only the ModelSpec (field 1) is read, by gateway.core.wire. A request whose spec cannot
be read, or a method this module does not route, is passed through to a replica unchanged so the
replica's own status is what the client sees.

What must always hold: code, details and trailing metadata of a replica's error reach the client
unchanged; the client's metadata reaches the replica as sent (binary values and repeated names
included); the client's deadline is forwarded as the remaining time; initial metadata carries
x-infergate-replica, x-infergate-version and x-infergate-cache, also on the gateway's own errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.core.call import Answer, Call
from gateway.core.errors import CODE_BY_VALUE, GatewayError
from gateway.core.wire import WireError, read_spec
from gateway.transport.compat.upstream import GrpcMethod
from gateway.transport.grpc_methods import METHODS
from gateway.transport.ingress import OWN_HEADERS, Ingress, answer_headers

log = logging.getLogger("infergate.grpc")

# Raw bytes in and out: the generic handlers are registered without (de)serialisers.
Context = grpc.aio.ServicerContext[bytes, bytes]
Handler = Callable[[bytes, Context], Awaitable[bytes]]



class GrpcIngress(grpc.GenericRpcHandler):
    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        path: str = handler_call_details.method
        h = self._handlers.get(path)
        if h is None:
            if not path.startswith("/tensorflow.serving."):
                return None  # UNIMPLEMENTED, as a TF Serving server answers
            h = grpc.unary_unary_rpc_method_handler(self._make(path, METHODS.get(path, "other")))
            if path in METHODS:  # only known methods are kept: clients choose the other names
                self._handlers[path] = h
        return h

    def _make(self, path: str, method: str) -> Handler:
        async def handle(body: bytes, context: Context) -> bytes:
            return await self._handle(path, method, body, context)
        return handle

    async def _handle(self, path: str, method: str, body: bytes,
                      context: Context) -> bytes:
        self.ingress.call_started()
        try:
            return await self._answer(path, method, body, context)
        finally:
            self.ingress.call_finished()

    async def _answer(self, path: str, method: str, body: bytes, context: Context) -> bytes:
        t0 = time.monotonic()

        def build() -> Call:
            remaining = context.time_remaining()
            deadline = None if remaining is None else t0 + remaining
            received = tuple(context.invocation_metadata() or ())
            md = {k.lower(): v for k, v in received if isinstance(v, str)}
            rpc = GrpcMethod.of(path, received)
            spec = None
            if method not in ("other", "reload"):
                try:
                    spec = read_spec(body, multi=method == "multi_inference")
                except WireError:
                    spec = None  # the replica answers a malformed request itself
            peer = context.peer() or ""  # "ipv4:ADDR:PORT", "ipv6:[ADDR]:PORT"
            peer = peer.partition(":")[2].rpartition(":")[0].strip("[]") or peer
            if spec is None or not spec.name:
                return Call("grpc", method if method == "reload" else "other", None, None, None,
                            "", md, body, deadline, rpc, peer)
            return Call("grpc", method, spec.name, spec.version, spec.label, spec.signature, md,
                        body, deadline, rpc, peer)

        result = await self.ingress.serve(build, t0)
        if isinstance(result, GatewayError):
            await context.send_initial_metadata(OWN_HEADERS)
            await context.abort(result.code, result.message)
            raise AssertionError("unreachable") from None
        return await _reply(result, context)


async def _reply(a: Answer, context: Context) -> bytes:
    md: list[tuple[str, Any]] = [(k, v) for k, v in a.headers if not k.startswith("x-infergate-")]
    md += answer_headers(a)
    await context.send_initial_metadata(tuple(md))
    if a.trailers:
        context.set_trailing_metadata(a.trailers)
    if a.status != 0:
        code = CODE_BY_VALUE.get(a.status, grpc.StatusCode.UNKNOWN)
        await context.abort(code, a.details, a.trailers or ())
    return a.body
