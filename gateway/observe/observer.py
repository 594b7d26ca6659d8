"""What an ingress does around a call when tracing or payload logging is on: the server span
around the routing, the payload record after it.

What must always hold: an ingress with no observer routes calls exactly as before (it keeps
its own `answer`; see gateway.transport.ingress); the observer never changes the outcome: the
span is ended and the call recorded with the result the ingress returns, and the result is
returned as it came.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from gateway.core.call import Answer, Call
from gateway.core.errors import GatewayError
from gateway.observe.payload import PayloadLog
from gateway.observe.tracing import Tracer

AnswerFn = Callable[[Call, float], Coroutine[Any, Any, Answer | GatewayError]]


class CallObserver:
    def __init__(self, tracer: Tracer | None, payload: PayloadLog | None) -> None:
        self.tracer = tracer
        self.payload = payload

    def wrap(self, answer: AnswerFn) -> AnswerFn:
        """`answer` (an ingress's: route a call, map its errors) observed."""
        tracer, payload = self.tracer, self.payload

        async def observed(call: Call, t0: float) -> Answer | GatewayError:
            started = None if tracer is None else tracer.start_call(call)
            if started is None:
                result = await answer(call, t0)
            else:
                assert tracer is not None
                span, token = started
                try:
                    result = await answer(call, t0)
                except BaseException:  # cancelled with its connection: end the span, go on
                    tracer.end_call(span, token, call, _CANCELLED)
                    raise
                tracer.end_call(span, token, call, result)
            if payload is not None:
                payload.record(call, result, t0)
            return result

        return observed


class Cancelled(GatewayError):
    """The call's task was cancelled (its client went away) before it was answered."""

    code = grpc.StatusCode.CANCELLED


_CANCELLED = Cancelled("cancelled")
