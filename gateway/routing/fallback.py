"""The cost ladder's lower rungs: when the routed target cannot answer, a model's fallback chain
is tried in order (a cheaper pool, an older or smaller version, a label), then an expired cache
entry (`stale_if_error_s`), before the call fails.

A tier is tried for the reasons its `on` lists: `unavailable` (no healthy replica of the target,
or its replicas refused or dropped the call), `overloaded` (an answer of 429 / 503 /
RESOURCE_EXHAUSTED / UNAVAILABLE, or shed at the gateway), `timeout` (a try ran past its per-try
timeout, or the model's timeout passed while the caller's deadline had time left).

What must always hold: a call that reached a replica is handed to another tier only when its
method is idempotent (a refused or unrouted call may go anywhere: nothing was sent); no tier
runs past the caller's deadline; the answer names the tier that served it
(`x-infergate-tier: primary | fallback:N | stale`, N counting from 1) and every fallback is
counted by model, reason and tier.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from gateway.core.call import IDEMPOTENT, Answer, Call, Forwarder
from gateway.core.errors import (
    BrownedOut,
    ConnectFailed,
    DeadlineExceeded,
    GatewayError,
    NoReplica,
    Overloaded,
    ReplicaUnavailable,
    TryTimedOut,
)
from gateway.core.metrics import Metrics
from gateway.fleet.replicas import ReplicaState
from gateway.routing.cache_step import CacheStep
from gateway.routing.router import ModelRouter
from gateway.routing.runtime import Runtime
from policies.base import PickContext

OVERLOADED_REST = frozenset({429, 503})
OVERLOADED_GRPC = frozenset({8, 14})  # RESOURCE_EXHAUSTED, UNAVAILABLE
TIMEOUT_REST, TIMEOUT_GRPC = 504, 4  # DEADLINE_EXCEEDED


def reason_of(result: Answer | GatewayError, protocol: str) -> str | None:
    """Why a result calls for the next tier; None when it is an answer to relay."""
    if isinstance(result, Answer):
        if protocol == "grpc":
            if result.status in OVERLOADED_GRPC:
                return "overloaded"
            return "timeout" if result.status == TIMEOUT_GRPC else None
        if result.status in OVERLOADED_REST:
            return "overloaded"
        return "timeout" if result.status == TIMEOUT_REST else None
    if isinstance(result, TryTimedOut | DeadlineExceeded):
        return "timeout"
    if isinstance(result, Overloaded):
        return "overloaded"
    if isinstance(result, NoReplica | ReplicaUnavailable):
        return "unavailable"
    return None


def _sent(result: Answer | GatewayError) -> bool:
    """Whether the call reached a replica (then only idempotent methods go elsewhere)."""
    return not isinstance(result, NoReplica | ConnectFailed | Overloaded)


class FallbackStep:
    def __init__(self, runtime: Callable[[], Runtime], cache: CacheStep, metrics: Metrics,
                 rng: random.Random) -> None:
        self._runtime = runtime
        self.cache = cache
        self.metrics = metrics
        self.rng = rng

    def wanted(self, router: ModelRouter, call: Call) -> bool:
        """Whether a failed primary of this call has anywhere else to go."""
        if router.cfg.fallback:
            return True
        exact = router.cfg.cache.exact if router.cfg.cache else None
        return exact is not None and exact.stale_if_error_s > 0 and call.method in IDEMPOTENT

    async def recover(self, call: Call, fwd: Forwarder, router: ModelRouter,
                      primary: Answer | GatewayError, allow_stale: bool = True) -> Answer:
        """The first tier's good answer, else a stale one, else the primary's outcome."""
        reason = reason_of(primary, call.protocol)
        if reason is None:
            return _give(primary)
        first_reason = "brownout" if isinstance(primary, BrownedOut) else reason
        last: Answer | GatewayError = primary
        model = router.name
        if call.method in IDEMPOTENT or not _sent(primary):
            for i, fb in enumerate(router.cfg.fallback):
                if reason not in fb.on:
                    continue
                if call.deadline is not None and time.monotonic() >= call.deadline:
                    break  # the caller's deadline is spent: no tier may extend it
                tier = f"fallback:{i + 1}"
                result = await self._try(call, fwd, router, fb.target)
                why = reason_of(result, call.protocol)
                if why is None:
                    if isinstance(result, Answer):
                        result.tier = tier
                        self.metrics.fallbacks.labels(model, first_reason, tier).inc()
                        return result
                    raise result  # an error no tier helps with (e.g. a bad request)
                last, reason = result, why
                if call.method not in IDEMPOTENT and _sent(result):
                    break
        stale = self.cache.stale(call) if allow_stale else None
        if stale is not None:
            self.metrics.fallbacks.labels(model, first_reason, "stale").inc()
            return stale
        return _give(last)

    async def _try(self, call: Call, fwd: Forwarder, router: ModelRouter,
                   target: str) -> Answer | GatewayError:
        reps = self._runtime().replicas
        model = router.name
        t = router.target_of(target)
        version = t.version if t.version is not None else reps.latest(model)
        cands = reps.available(model, version) if version is not None else []
        if t.pool is not None:
            cands = [r for r in cands if r.pool == t.pool]
        if not cands:
            return NoReplica(f"No healthy replica can serve model {model} at {target}")
        now = time.monotonic()
        key = router.session_key(call.headers) if router.sticky is not None else None
        ranked: list[ReplicaState] = router.rank(  # type: ignore[assignment]
            cands, PickContext(self.rng, now, key))
        try:
            return await self.cache.send(call, fwd, ranked, version, target, now)
        except GatewayError as exc:
            return exc


def _give(result: Answer | GatewayError) -> Answer:
    if isinstance(result, GatewayError):
        raise result
    return result
