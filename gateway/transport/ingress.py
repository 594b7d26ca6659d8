"""The ingress layer every engine shares: a `Call` in, an `Answer` or the gateway's own error
out, counted, observed and marked with the x-infergate headers.

Engines (native REST, native gRPC, compat REST, compat gRPC) differ in how they parse and write
bytes; what they do with a call is here, once: hand it to the pipeline, map a `GatewayError`,
never leak an unexpected exception, count every call for the drain, observe every answer.

What must always hold: every answer names its replica, version and cache outcome (empty and
"miss" for the gateway's own errors); an unexpected exception becomes INTERNAL / 500 "Internal
gateway error", logged here with its traceback and never sent to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.core.call import Answer, Call, Forwarder
from gateway.core.errors import GatewayError
from gateway.core.metrics import Metrics

if TYPE_CHECKING:
    from gateway.observe import CallObserver

log = logging.getLogger("infergate.ingress")

REPLICA = "x-infergate-replica"
VERSION = "x-infergate-version"
CACHE = "x-infergate-cache"
TIER = "x-infergate-tier"
# The x-infergate headers of an answer the gateway gives itself: no replica, version or cache.
OWN_HEADERS: tuple[tuple[str, str], ...] = ((REPLICA, ""), (VERSION, ""), (CACHE, "miss"))


class InternalError(GatewayError):
    """A bug in the gateway, answered as INTERNAL without its details."""


def answer_headers(a: Answer) -> list[tuple[str, str]]:
    """The x-infergate headers of an answer (HTTP headers; gRPC initial metadata)."""
    return [(REPLICA, a.replica), (VERSION, "" if a.version is None else str(a.version)),
            (CACHE, a.cache), (TIER, a.tier)]


class IngressHost(Protocol):
    """What an ingress needs of the gateway: the pipeline, the completion hook, the call count
    a drain waits for, and whether a drain has begun."""

    @property
    def draining(self) -> bool: ...

    async def handle(self, call: Call, fwd: Forwarder) -> Answer: ...

    def observe_call(self, protocol: str, model: str | None, answer: Answer | None, code: str,
                     t0: float, call: Call | None = None) -> None: ...

    def call_started(self) -> None: ...

    def call_finished(self) -> None: ...


class Ingress:
    """One protocol's door into the pipeline (`protocol` is "rest" or "grpc")."""

    def __init__(self, host: IngressHost, protocol: str, fwd: Forwarder, metrics: Metrics,
                 observer: CallObserver | None = None) -> None:
        self.host = host
        self.protocol = protocol
        self.fwd = fwd
        self.metrics = metrics
        if observer is not None:
            # Tracing or payload logging: this instance's `answer` is the observed one. Without
            # an observer the class's own stays, not even a None check on the call's path.
            self.answer = observer.wrap(self.answer)  # type: ignore[method-assign,assignment]

    @property
    def draining(self) -> bool:
        return self.host.draining

    def call_started(self) -> None:
        self.host.call_started()

    def call_finished(self) -> None:
        self.host.call_finished()

    def code(self, exc: GatewayError) -> str:
        return str(exc.code.value[0] if self.protocol == "grpc" else exc.http_status)

    async def serve(self, build: Callable[[], Call], t0: float) -> Answer | GatewayError:
        """Build the call (a BadRequest there is answered too), route it, observe the outcome."""
        try:
            call = build()
        except GatewayError as exc:
            self.refused(exc, None, t0)
            return exc
        return await self.answer(call, t0)

    async def answer(self, call: Call, t0: float) -> Answer | GatewayError:
        """Route a call, observe the outcome; errors come back as the GatewayError to answer."""
        try:
            answer = await self.host.handle(call, self.fwd)
        except GatewayError as exc:
            self.refused(exc, call.model, t0)
            return exc
        except Exception:
            log.exception("unexpected error answering a %s call to %s", self.protocol,
                          call.model or "(no model)")
            self.metrics.errors.labels(self.protocol, "internal").inc()
            return InternalError("Internal gateway error")
        self.host.observe_call(self.protocol, call.model, answer, str(answer.status), t0, call)
        return answer

    def refused(self, exc: GatewayError, model: str | None, t0: float) -> None:
        """Count and observe an error the gateway answers itself."""
        self.metrics.errors.labels(self.protocol, type(exc).__name__).inc()
        self.host.observe_call(self.protocol, model, None, self.code(exc), t0)
