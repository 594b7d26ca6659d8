"""The filters every call passes: admission -> resolve -> cache -> rank -> upstream (retry).

`Pipeline` strings the steps together; each lives in its own module: `admission` (the in-flight
limit and queue), `router` (rule chains, splits, sticky and balance policies), `cache_step` and
`similarity` (prediction caches), `dispatch` (retries, hedging, per-try timeouts), `shadow`
(copies to a shadow or canary target).

What must always hold:
- a call is answered exactly once, by an `Answer` or by a `GatewayError` the ingress maps;
- the pipeline reaches the rest of the gateway only through what it is handed: the current
  Runtime, the fleet's discovery, the rollouts' feed, the caches and the metrics;
- a model name no replica serves leaves no state behind (no router, no metric label).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from gateway.cache import PredictionCache
from gateway.config import ExactCache
from gateway.core.call import IDEMPOTENT, Answer, Call, Forwarder
from gateway.core.errors import BrownedOut, GatewayError, NoReplica
from gateway.core.metrics import Metrics
from gateway.fleet.outlier import OutlierDetector
from gateway.fleet.replicas import ReplicaState
from gateway.routing.admission import Admission
from gateway.routing.brownout import BrownoutPicker
from gateway.routing.cache_step import CacheStep
from gateway.routing.dispatch import Dispatcher, UpstreamDone
from gateway.routing.fallback import FallbackStep
from gateway.routing.router import ModelRouter
from gateway.routing.runtime import Runtime
from gateway.routing.shadow import RolloutView, Shadower
from gateway.routing.similarity import SimilarityCaches
from gateway.routing.tenants import OPEN, TenantBook
from policies.base import PickContext

NOT_FOUND_CODE = 5  # grpc.StatusCode.NOT_FOUND


class Discovery(Protocol):
    """What the pipeline asks of the fleet's health checker about model names."""

    @property
    def discovered(self) -> set[str]: ...

    async def discover(self, model: str) -> None: ...

    async def refresh(self, model: str) -> None: ...


class RolloutFeed(RolloutView, Protocol):
    def observe(self, model: str, arm: str, ok: bool, latency_s: float) -> None: ...


# A model's route for a call: its primary alone, or with the fallback chain behind it.
Route = Callable[[Call, Forwarder, ModelRouter, float], Coroutine[Any, Any, Answer]]


class Pipeline:
    def __init__(self, runtime: Callable[[], Runtime], metrics: Metrics, discovery: Discovery,
                 rollouts: RolloutFeed, caches: Callable[[str], PredictionCache | None],
                 outlier: OutlierDetector, p95_ms: Callable[[str, float], float | None],
                 on_upstream_done: UpstreamDone,
                 brownout: Callable[[str], float] = lambda pool: 0.0,
                 tenants: TenantBook | None = None) -> None:
        self._runtime = runtime
        self.metrics = metrics
        self.discovery = discovery
        self.rollouts = rollouts
        self.rng = random.Random()
        self._rr = 0
        self.tenants = tenants if tenants is not None else TenantBook(metrics)
        self.admission = Admission(metrics)
        self.dispatcher = Dispatcher(runtime, metrics, self.admission, outlier, p95_ms,
                                     on_upstream_done, self.model_label, self.tenants)
        self.cache = CacheStep(self.dispatcher, caches, metrics, self._exact)
        self.fallback = FallbackStep(runtime, self.cache, metrics, self.rng)
        self._brownout = brownout  # a pool's brownout level, 0..1 (the scale service's)
        self.browning = BrownoutPicker()
        self.shadower = Shadower(self.dispatcher, runtime, rollouts, metrics, self.rng)
        self.similarity = SimilarityCaches(self.cache, metrics, self.rng)

    def _exact(self, model: str) -> ExactCache | None:
        m = self._runtime().cfg.models.get(model)
        return m.cache.exact if m is not None and m.cache is not None else None

    def model_label(self, model: str | None) -> str:
        """A model name safe to use as a metric label (a bounded set)."""
        if model is None:
            return ""
        if model in self._runtime().cfg.models or model in self.discovery.discovered:
            return model
        return "_other"

    async def handle(self, call: Call, fwd: Forwarder) -> Answer:
        rt = self._runtime()
        now = time.monotonic()
        model = call.model
        if not model:
            self._door(call, OPEN, rt)
            if call.method == "reload":
                return await self._broadcast(call, fwd, now)
            return await self.dispatcher.send(call, fwd, self._any(now), None, "", now)
        router = rt.router(model)
        tenant = (OPEN if not (self.tenants.tenants or router.key_digests)
                  else await self.tenants.admit(call, router, now))
        ok = False
        try:  # one body for open models and admitted tenants (no coroutine of its own)
            self._door(call, tenant, rt)
            if not rt.replicas.knows(model):
                await self.discovery.discover(model)
            # Without a fallback chain for this call, straight to the primary route.
            route = self._route if self.fallback.wanted(router, call) else self._route_primary
            answer = await route(call, fwd, router, now)
            if answer.status == (NOT_FOUND_CODE if call.protocol == "grpc" else 404):
                answer = await self._vanished(call, fwd, router, route, answer)
            if tenant != OPEN:
                ok = answer.ok(call.protocol)
            return answer
        finally:
            if tenant != OPEN:  # an admitted tenant's call is released, whatever happened
                self.tenants.release(tenant, ok)

    def _door(self, call: Call, tenant: str, rt: Runtime) -> None:
        """Shed at the door when the gateway holds too many calls (from 80 % of its limit), by
        the call's priority (its tenant's, or its x-priority header on an open model)."""
        if self.admission.in_flight >= rt.admission_limit * 0.8:
            priority = (call.headers.get("x-priority", "standard") if tenant == OPEN
                        else self.tenants.priority(tenant, call.headers))
            self.admission.check(priority, rt.admission_limit)

    async def _vanished(self, call: Call, fwd: Forwarder, router: ModelRouter, route: Route,
                        answer: Answer) -> Answer:
        """A 404: if it is for the version the gateway picked from its last probe and that
        replica has just unloaded it (TF Serving unloads the old latest as soon as a new one is
        AVAILABLE), look again now and route once more, instead of relaying a 404 the client
        never asked for."""
        if not self._chosen_version_vanished(call, router, answer):
            return answer
        self.metrics.retries.labels(self.model_label(router.name)).inc()
        await self.discovery.refresh(router.name)
        return await route(call, fwd, router, time.monotonic())

    def _chosen_version_vanished(self, call: Call, router: ModelRouter, answer: Answer) -> bool:
        if call.version is not None or call.method == "status" or answer.cache == "hit":
            return False
        if answer.version is None:
            return False  # no version was chosen here (a name no replica serves): nothing vanished
        if call.label is not None and call.label not in router.labels:
            return False  # the replica resolved that label, not the gateway
        return answer.status == (NOT_FOUND_CODE if call.protocol == "grpc" else 404)

    async def _route(self, call: Call, fwd: Forwarder, router: ModelRouter, now: float) -> Answer:
        """The primary with the model's fallback chain behind it (fallback.wanted)."""
        if router.cfg.fallback and self._browned_out(call, router, now):
            try:
                moved = await self.fallback.recover(call, fwd, router, BrownedOut("brownout"),
                                                    allow_stale=False)
                if moved.tier != "primary":
                    return moved
            except GatewayError:
                pass  # no tier could take it: the primary serves it after all
        try:
            primary: Answer | GatewayError = await self._route_primary(call, fwd, router, now)
        except GatewayError as exc:
            primary = exc
        return await self.fallback.recover(call, fwd, router, primary)

    def _browned_out(self, call: Call, router: ModelRouter, now: float) -> bool:
        """Whether a brownout of the model's primary pool moves this call down the ladder."""
        share = router.cfg.brownout_share()
        if share <= 0.0 or call.method not in IDEMPOTENT:
            return False
        reps = self._runtime().replicas
        latest = reps.latest(router.name)
        if latest is None:
            return False
        lower = {fb.target[5:] for fb in router.cfg.fallback if fb.target.startswith("pool:")}
        level = max((self._brownout(r.pool) for r in reps.available(router.name, latest)
                     if r.pool not in lower), default=0.0)
        return self.browning.divert(router.name, call.headers, level * share, now, self.rng)

    async def _route_primary(self, call: Call, fwd: Forwarder, router: ModelRouter,
                             now: float) -> Answer:
        model = router.name
        version, candidates, arm = self._resolve(call, router, now)
        if not candidates:
            return await self._unroutable(call, fwd, router, version, now)
        key = router.session_key(call.headers) if router.sticky is not None else None
        if router.sticky is not None and key is None:
            self.metrics.sticky_fallback.labels(model).inc()
        ctx = PickContext(self.rng, now, key)
        ranked: list[ReplicaState] = router.rank(candidates, ctx)  # type: ignore[assignment]
        sim = router.cfg.cache.similarity if router.cfg.cache else None
        if sim is not None and version is not None:
            answer = await self.similarity.handle(call, fwd, ranked, version, arm, now, sim)
        elif self.cache.has_cache(model):
            answer = await self.cache.send(call, fwd, ranked, version, arm, now)
        else:  # the cache step's first branch, without its coroutine
            answer = await self.dispatcher.send(call, fwd, ranked, version, arm, now)
        if router.cfg.shadow is not None or router.cfg.rollout is not None:
            self.shadower.maybe_mirror(call, fwd, answer, router)
        return answer

    def _resolve(self, call: Call, router: ModelRouter,
                 now: float) -> tuple[int | None, list[ReplicaState], str]:
        """(version to forward, eligible replicas, split arm) for a call."""
        reps = self._runtime().replicas
        model = router.name
        if call.version is not None:
            return call.version, reps.available(model, call.version), f"version:{call.version}"
        if call.label is not None:
            v = router.labels.get(call.label)
            if v is None:  # a label the gateway does not own: the replica resolves it
                return None, reps.with_model(model, now), call.label
            return v, reps.available(model, v), call.label
        if call.method == "status":  # status without a version lists every version as is
            return None, reps.with_model(model, now), "status"
        targets = router.choose_targets(call.headers, call.method, call.protocol, self.rng)
        for t in targets:
            v = t.version if t.version is not None else reps.latest(model)
            if v is None:
                continue
            cands = reps.available(model, v)
            if t.pool is not None:
                cands = [r for r in cands if r.pool == t.pool]
            if cands:
                if t.arm != "latest" or len(targets) > 1:
                    mx = self.metrics
                    mx.child(mx.split_arm, model, t.arm).inc()
                return v, cands, t.arm
            if t.pool is not None:
                # A pool target reaches another pool only through a configured fallback.
                break
            ro = router.cfg.rollout
            if ro is not None and t.arm == ro.canary and any(
                    r.versions.get(model, {}).get(v) == "AVAILABLE" for r in reps.all):
                # The canary is loaded but no replica of it may serve (ejected, failing health):
                # the rollout must see that as a failing canary, not as a quiet one.
                self.rollouts.observe(model, t.arm, False, 0.0)
        return None, [], ""

    async def _unroutable(self, call: Call, fwd: Forwarder, router: ModelRouter,
                          version: int | None, now: float) -> Answer:
        """No replica can serve: relay the replicas' own answer when the model or version does
        not exist (TF Serving's exact 404), else say which model and version are unavailable."""
        reps = self._runtime().replicas
        model = router.name
        wanted = call.version
        if wanted is None and call.label is not None:
            wanted = router.labels.get(call.label)
        loaded_somewhere = any(
            r.versions.get(model, {}).get(wanted if wanted is not None else -1) == "AVAILABLE"
            for r in reps.all)
        if wanted is None:
            loaded_somewhere = any(
                s == "AVAILABLE" for r in reps.all for s in r.versions.get(model, {}).values())
        if loaded_somewhere:
            what = f"version {wanted}" if wanted is not None else "any version"
            raise NoReplica(f"No healthy replica can serve model {model} {what}")
        # Forward with the version the gateway resolved, so a gateway-owned label that points at
        # a version no replica has gets the replica's own "servable not found".
        return await self.dispatcher.send(call, fwd, self._any(now), wanted, "", now)

    async def _broadcast(self, call: Call, fwd: Forwarder, now: float) -> Answer:
        """HandleReloadConfigRequest changes a replica's model config: send it to every
        routable replica; the answer is the first failure, or the first success."""
        replicas = self._any(now)
        results = await asyncio.gather(
            *(self.dispatcher.try_once(call, fwd, r, None, 30.0) for r in replicas))
        for res in results:
            if isinstance(res, GatewayError):
                raise res
            if not res.ok(call.protocol):
                return res
        first = results[0]
        assert isinstance(first, Answer)
        return first

    def _any(self, now: float) -> list[ReplicaState]:
        reps = self._runtime().replicas.routable(now)
        if not reps:
            reps = [r for r in self._runtime().replicas.all if r.healthy]
        if not reps:
            raise NoReplica("No healthy replica is available")
        self._rr = (self._rr + 1) % len(reps)
        return reps[self._rr:] + reps[:self._rr]
