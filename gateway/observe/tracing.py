"""OpenTelemetry tracing of the gateway's calls: a server span for each call an ingress takes,
a client span for each upstream try (a retry, a hedge and a shadow copy are tries of their
own, named by `infergate.try`: first, retry, hedge, shadow; a hedge's cancelled loser is marked
`infergate.cancelled`, not an error), and each try's own traceparent sent to the replica.

W3C Trace Context (https://www.w3.org/TR/trace-context/): a client's traceparent/tracestate
(REST headers, gRPC metadata: both in `Call.headers`) is continued; without one the gateway
starts a trace for a share of its calls (drawn before any span exists, so an untraced call
costs one random draw; a client's sampled flag decides for its own calls, parent-based).
Spans leave in batches from the SDK's own thread to an OTLP receiver (HTTP/protobuf or gRPC).

What must always hold: nothing here runs unless `tracing` is configured (the ingress and the
dispatcher hold a `Tracer` or None, and None leaves their path as it is); the OpenTelemetry
packages (the `tracing` extra) are imported only when a Tracer is built; the server span is the
current span while the call is routed, so tries started by the call's task or by tasks it
spawns (hedges, shadow copies) are its children; a try's traceparent names the try's span,
never the client's.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import random
import re
from collections.abc import Callable, Coroutine
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.config import Tracing
from gateway.core.call import TRY_KIND, Answer, Call, Forwarder, Upstream
from gateway.core.errors import GatewayError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

log = logging.getLogger("infergate.tracing")
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
# version-traceid-parentid-flags; all-zero ids are invalid (W3C Trace Context, section 3.2).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-([0-9a-f]{2})")
R = TypeVar("R", bound=Upstream)
# Whether the call running in this context is traced (set with its server span); read by each
# try first, so an untraced call's tries skip OpenTelemetry with one lookup.
_TRACED: ContextVar[bool] = ContextVar("infergate_traced", default=False)
CallToken = tuple[object, Token[bool]]  # what end_call undoes: the OTel context, _TRACED
Attempt = Callable[[Call, Forwarder, R, int | None, float], Coroutine[Any, Any, Answer]]


class TracingUnavailable(RuntimeError):
    """`tracing` is configured but the OpenTelemetry packages are not installed."""


def _load_otel(cfg: Tracing) -> dict[str, Any]:
    """The SDK's TracerProvider and its batch processor (exporting to the receiver), the W3C
    propagator, the API's context and trace modules. Imported here, not at the top: they are
    the optional `tracing` extra."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    exporter: Any
    if cfg.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint + "/v1/traces",
                                    headers=dict(cfg.headers))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        exporter = GrpcSpanExporter(endpoint=cfg.otlp_endpoint, headers=dict(cfg.headers),
                                    insecure=cfg.otlp_endpoint.startswith("http://"))
    # No atexit hook: Tracer.shutdown flushes within a bound at close (the SDK's own waits 30 s
    # for an unreachable receiver). Root spans are sampled by Tracer.start_call before any span
    # exists (an unsampled call costs a random draw), so the SDK samples every root it is given.
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON),
                              resource=Resource.create({"service.name": cfg.service_name}),
                              shutdown_on_exit=False)
    processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return {"provider": provider, "processor": processor,
            "propagator": TraceContextTextMapPropagator(), "context": context, "trace": trace}


def with_trace_headers(call: Call, carrier: dict[str, str]) -> Call:
    """A copy of `call` whose traceparent/tracestate are `carrier`'s, in its headers and in
    the caller's metadata a gRPC forwarder sends when the ingress kept it (Call.extra's
    `wire_metadata` or `metadata`, whichever the forwarder reads first)."""
    headers = {k: v for k, v in call.headers.items() if k not in TRACE_HEADERS}
    headers.update(carrier)
    extra = call.extra
    for attr in ("wire_metadata", "metadata"):
        pairs = getattr(extra, attr, None)
        if pairs:
            extra = copy.copy(extra)
            setattr(extra, attr, tuple(p for p in pairs if p[0] not in TRACE_HEADERS)
                    + tuple(carrier.items()))
            break
    return dataclasses.replace(call, headers=headers, extra=extra)


class Tracer:
    """The spans of one gateway process. Built only when `tracing` is configured."""

    def __init__(self, cfg: Tracing) -> None:
        try:
            otel = _load_otel(cfg)
        except ImportError as exc:
            raise TracingUnavailable(
                "tracing is configured but OpenTelemetry is not installed: "
                "pip install 'infergate[tracing]'") from exc
        self.provider: TracerProvider = otel["provider"]
        self._processor = otel["processor"]
        self._tracer = self.provider.get_tracer("infergate")
        self._propagator = otel["propagator"]
        self._context = otel["context"]
        self._trace = trace = otel["trace"]
        self._server = trace.SpanKind.SERVER
        self._client = trace.SpanKind.CLIENT
        self._ratio = cfg.sample_ratio
        self._random = random.Random().random

    # ---- the gateway call ----------------------------------------------------------------

    def start_call(self, call: Call) -> tuple[Span, CallToken] | None:
        """The call's server span, made the current one (returns it and the token to detach);
        None for a call that is not traced: its client's trace is not sampled, or it starts
        none (a missing or malformed traceparent) and the sample_ratio draw says no. Nothing
        of OpenTelemetry runs for it, here or in its tries."""
        headers = call.headers
        parent: Context | None = None
        given = headers.get("traceparent")
        match = None if given is None else _TRACEPARENT.fullmatch(given.strip())
        if match is None:  # no client trace (or a malformed one): the gateway's draw
            if self._random() >= self._ratio:
                return None
        elif not int(match.group(1), 16) & 1:  # the client's trace, not sampled
            return None
        else:
            parent = self._propagator.extract(headers)
        span = self._tracer.start_span(f"{call.protocol} {call.method}", context=parent,
                                       kind=self._server)
        if span.is_recording():
            span.set_attributes({"infergate.protocol": call.protocol,
                                 "infergate.model": call.model or "",
                                 "infergate.label": call.label or "",
                                 "infergate.request.size": len(call.body)})
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        return span, (token, _TRACED.set(True))

    def end_call(self, span: Span, token: CallToken, call: Call,
                 result: Answer | GatewayError) -> None:
        otel_token, traced_token = token
        self._context.detach(otel_token)
        _TRACED.reset(traced_token)
        if span.is_recording():
            if isinstance(result, Answer):
                version = result.version if result.version is not None else call.version
                span.set_attributes({
                    "infergate.version": -1 if version is None else version,
                    "infergate.arm": result.arm, "infergate.replica": result.replica,
                    "infergate.cache": result.cache, "infergate.tier": result.tier,
                    "infergate.status": result.status, "infergate.response.size": len(result.body)})
                if not result.ok(call.protocol):
                    span.set_status(self._trace.StatusCode.ERROR)
            else:
                code = result.code.value[0] if call.protocol == "grpc" else result.http_status
                span.set_attributes({"infergate.status": code, "infergate.cache": "miss",
                                     "infergate.error": type(result).__name__})
                span.set_status(self._trace.StatusCode.ERROR, result.message)
        span.end()

    # ---- upstream tries ------------------------------------------------------------------

    def traced_attempt(self, attempt: Attempt[R]) -> Attempt[R]:
        """`attempt` (one try at one replica) inside a client span, the call's headers carrying
        that span as the replica's parent."""
        tracer, client, trace = self._tracer, self._client, self._trace
        inject = self._propagator.inject

        traced_call = _TRACED.get

        async def traced(call: Call, fwd: Forwarder, replica: R, version: int | None,
                         timeout: float) -> Answer:
            # A call that is not traced. (A shadow copy runs after its call's span has ended,
            # in a task spawned while the call was traced: it belongs to the trace.)
            if not traced_call():
                return await attempt(call, fwd, replica, version, timeout)
            span = tracer.start_span(f"upstream {call.method}", kind=client)
            carrier: dict[str, str] = {}
            inject(carrier, context=trace.set_span_in_context(span))
            recording = span.is_recording()
            if recording:
                span.set_attributes({
                    "infergate.model": call.model or "", "infergate.label": call.label or "",
                    "infergate.version": -1 if version is None else version,
                    "infergate.replica": replica.name, "infergate.request.size": len(call.body),
                    "infergate.try": TRY_KIND.get()})
            try:
                answer = await attempt(with_trace_headers(call, carrier), fwd, replica, version,
                                       timeout)
            except asyncio.CancelledError:  # a hedge's losing copy, or the caller gone: no error
                if recording:
                    span.set_attribute("infergate.cancelled", True)
                span.end()
                raise
            except BaseException as exc:  # a failed try
                if recording:
                    span.set_attribute("infergate.error", type(exc).__name__)
                    span.set_status(trace.StatusCode.ERROR, str(exc)[:200])
                span.end()
                raise
            if recording:
                span.set_attributes({"infergate.status": answer.status,
                                     "infergate.response.size": len(answer.body)})
                if not answer.ok(call.protocol):
                    span.set_status(trace.StatusCode.ERROR)
            span.end()
            return answer

        return traced

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Send the spans still waiting, stop the exporter; an unreachable receiver holds the
        gateway's exit for `timeout_s` at most (blocks: call it in a thread)."""
        if self._processor.force_flush(int(timeout_s * 1000)):
            self.provider.shutdown()  # nothing left to send: returns at once
        else:  # the exporter's thread is a daemon: it ends with the process
            log.warning("tracing: spans not sent within %.0f s of closing; dropped", timeout_s)
