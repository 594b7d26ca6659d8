"""Shadow traffic: mirror a sample of a model's calls to another target and compare answers.

Two sources of mirrored calls: the model's `shadow: {target, percent}` config, and a running
canary rollout, which samples calls served by the stable arm and sends a copy to the canary so
the rollout can judge prediction agreement, not only errors and latency.

What must always hold: the client never waits for, nor sees, a shadow answer (mirroring starts
after the client's answer exists and runs as a background task); a shadow call is skipped when
every eligible replica of its target is busy (at half its in-flight cap or more); a shadow failure
is counted, never raised. A failed mirrored call is not an agreement sample: there is no answer
to compare, and the rollout's error-rate check already judges the canary's failures (counting
them twice would roll a failing canary back as "disagreeing").
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from gateway.core.call import TRY_KIND, Answer, Call, Forwarder
from gateway.core.errors import GatewayError
from gateway.core.metrics import Metrics
from gateway.core.tasks import spawn
from gateway.fleet.replicas import ReplicaState
from gateway.rollout.compare import compare_predictions
from gateway.routing.dispatch import Dispatcher
from gateway.routing.router import ModelRouter
from gateway.routing.runtime import Runtime
from policies.base import PickContext

log = logging.getLogger("infergate.shadow")

MIRRORED = frozenset({"predict", "classify", "regress", "multi_inference"})
ROLLOUT_SAMPLE = 0.2  # share of stable-arm calls mirrored to the canary during a rollout
SHADOW_TIMEOUT_S = 10.0


class RolloutView(Protocol):
    """What shadowing reads of rollouts and reports to them (gateway.rollout's manager)."""

    def weights(self, model: str) -> dict[str, float] | None: ...

    def observe_agreement(self, model: str, agreed: bool) -> None: ...


class Shadower:
    def __init__(self, dispatcher: Dispatcher, runtime: Callable[[], Runtime],
                 rollouts: RolloutView, metrics: Metrics, rng: random.Random) -> None:
        self.dispatcher = dispatcher
        self._runtime = runtime
        self.rollouts = rollouts
        self.metrics = metrics
        self.rng = rng

    def maybe_mirror(self, call: Call, fwd: Forwarder, answer: Answer, router: ModelRouter) -> None:
        if call.method not in MIRRORED or answer.cache == "hit" or not answer.ok(call.protocol):
            return
        rng = self.rng
        cfg = router.cfg
        target: str | None = None
        for_rollout = False
        ro = cfg.rollout
        weights = self.rollouts.weights(router.name) if ro is not None else None
        if (ro is not None and weights and 0 < weights.get(ro.canary, 0) < 100
                and answer.arm == ro.stable and rng.random() < ROLLOUT_SAMPLE):
            target, for_rollout = ro.canary, True
        elif cfg.shadow is not None and answer.arm != cfg.shadow.target \
                and rng.random() * 100 < cfg.shadow.percent:
            target = cfg.shadow.target
            for_rollout = ro is not None and target == ro.canary
        if target is not None:
            spawn(self._mirror(call, fwd, answer, router, target, for_rollout), "shadow")

    async def _mirror(self, call: Call, fwd: Forwarder, answer: Answer, router: ModelRouter,
                      target: str, for_rollout: bool) -> None:
        TRY_KIND.set("shadow")  # this task's own context: its try span says so
        model = router.name
        m = self.metrics.shadow
        rt = self._runtime()
        t = router.target_of(target)
        reps = rt.replicas
        version = t.version if t.version is not None else reps.latest(model)
        if version is None:
            m.labels(model, "skipped").inc()
            return
        cands = [r for r in reps.available(model, version) if t.pool is None or r.pool == t.pool]
        cap = rt.cfg.limits.max_in_flight_per_replica
        cands = [r for r in cands if r.in_flight * 2 < cap]
        if not cands:
            m.labels(model, "skipped").inc()
            return
        ranked: list[ReplicaState] = router.balancer.rank(  # type: ignore[assignment]
            cands, PickContext(self.rng, time.monotonic()))
        try:
            shadow = await self.dispatcher.attempt(call, fwd, ranked[0], version, SHADOW_TIMEOUT_S)
        except GatewayError as exc:
            m.labels(model, "error").inc()
            log.debug("shadow call to %s failed: %s", target, exc)
            return
        if not shadow.ok(call.protocol):
            m.labels(model, "error").inc()
            return
        agreed = compare_predictions(answer.body, shadow.body, call.protocol, method=call.method)
        m.labels(model, "agree" if agreed else "disagree").inc()
        if for_rollout:
            self.rollouts.observe_agreement(model, agreed)
