"""The filters every call passes: admission -> resolve -> cache -> rank -> upstream (retry).

What must always hold:
- a call is answered exactly once, by an `Answer` or by a `GatewayError` the ingress maps;
- the replica's in-flight count is incremented before a send and decremented after it, whatever
  happens (cancellation included);
- a retry goes to a different replica, only for idempotent methods, only on a connection failure
  or UNAVAILABLE/503, only within the retry budget and the remaining deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

from gateway.budget import RetryBudget
from gateway.cache import Entry, PredictionCache, cache_key
from gateway.call import IDEMPOTENT, Answer, Call, Forwarder
from gateway.config import Hedge
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    NoReplica,
    Overloaded,
    ReplicaUnavailable,
    Unauthenticated,
)
from gateway.replicas import ReplicaState
from gateway.routing import ModelRouter
from gateway.shadow import Shadower
from gateway.similarity_cache import SimilarityCaches
from policies.base import PickContext

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("infergate.pipeline")

# Outlier ejection (Envoy's consecutive_5xx): eject after this many consecutive failures for
# BASE_EJECTION_S x the number of times the replica was ejected, capped at MAX_EJECTION_S.
CONSECUTIVE_ERRORS = 5
BASE_EJECTION_S = 30.0
MAX_EJECTION_S = 300.0

CACHEABLE = frozenset({"predict", "classify", "regress", "multi_inference"})
DEADLINE_CODE = 4  # grpc.StatusCode.DEADLINE_EXCEEDED
NOT_FOUND_CODE = 5  # grpc.StatusCode.NOT_FOUND


class Pipeline:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.rng = random.Random()
        self._rr = 0
        self._p95: dict[str, tuple[float, float]] = {}
        self._hedge_budgets: dict[str, RetryBudget] = {}
        self.shadower = Shadower(self)
        self.similarity = SimilarityCaches(self)

    async def handle(self, call: Call, fwd: Forwarder) -> Answer:
        gw = self.gw
        rt = gw.runtime
        now = time.monotonic()
        if gw.total_in_flight >= rt.admission_limit:
            priority = call.headers.get("x-priority", "standard")
            if priority != "critical" or gw.total_in_flight >= rt.admission_limit * 2:
                gw.metrics.shed.labels("queue_full").inc()
                raise Overloaded("Too many requests in flight at the gateway")
        elif (gw.total_in_flight >= rt.admission_limit * 0.8
              and call.headers.get("x-priority") == "sheddable"):
            gw.metrics.shed.labels("sheddable").inc()
            raise Overloaded("Shedding low-priority request under load")

        model = call.model
        if not model:
            if call.method == "reload":
                return await self._broadcast(call, fwd, now)
            return await self._send(call, fwd, self._any(now), None, "", now)
        if not rt.replicas.knows(model):
            await gw.health.discover(model)
        router = rt.router(model)
        if not router.authorized(call.headers):
            raise Unauthenticated(f"Missing or invalid API key for model {model}")
        answer = await self._route(call, fwd, router, now)
        if (answer.status == (NOT_FOUND_CODE if call.protocol == "grpc" else 404)
                and self._chosen_version_vanished(call, router, answer)):
            # The gateway picked the version from its last probe and that replica has just
            # unloaded it (TF Serving unloads the old latest as soon as a new one is AVAILABLE):
            # look again now and route once more, instead of relaying a 404 the client never
            # asked for.
            gw.metrics.retries.labels(gw.model_label(model)).inc()
            await gw.health.refresh(model)
            answer = await self._route(call, fwd, router, time.monotonic())
        return answer

    def _chosen_version_vanished(self, call: Call, router: ModelRouter, answer: Answer) -> bool:
        if call.version is not None or call.method == "status" or answer.cache == "hit":
            return False
        if call.label is not None and call.label not in router.labels:
            return False  # the replica resolved that label, not the gateway
        return answer.status == (NOT_FOUND_CODE if call.protocol == "grpc" else 404)

    async def _route(self, call: Call, fwd: Forwarder, router: ModelRouter, now: float) -> Answer:
        gw = self.gw
        model = router.name
        version, candidates, arm = self._resolve(call, router, now)
        if not candidates:
            return await self._unroutable(call, fwd, router, version, now)
        key = router.session_key(call.headers) if router.sticky is not None else None
        if router.sticky is not None and key is None:
            gw.metrics.sticky_fallback.labels(model).inc()
        ctx = PickContext(self.rng, now, key)
        ranked: list[ReplicaState] = router.rank(candidates, ctx)  # type: ignore[assignment]
        sim = router.cfg.cache.similarity if router.cfg.cache else None
        if sim is not None and version is not None:
            answer = await self.similarity.handle(call, fwd, ranked, version, arm, now, sim)
        elif model in gw.caches:
            answer = await self.send_cached(call, fwd, ranked, version, arm, now)
        else:  # send_cached's first step, without its coroutine
            answer = await self._send(call, fwd, ranked, version, arm, now)
        if router.cfg.shadow is not None or router.cfg.rollout is not None:
            self.shadower.maybe_mirror(call, fwd, answer, router)
        return answer

    async def send_cached(self, call: Call, fwd: Forwarder, ranked: list[ReplicaState],
                          version: int | None, arm: str, now: float) -> Answer:
        """Through the model's exact-match cache when it has one, else straight upstream."""
        cache = self.gw.caches.get(call.model or "")
        if cache is None or version is None or call.method not in CACHEABLE:
            return await self._send(call, fwd, ranked, version, arm, now)
        return await self._cached(cache, call, fwd, ranked, version, arm, now)

    async def _cached(self, cache: PredictionCache, call: Call, fwd: Forwarder,
                      ranked: list[ReplicaState], version: int, arm: str, now: float) -> Answer:
        """Exact-match cache with single-flight: identical concurrent misses share one call."""
        m = self.gw.metrics.cache
        model = call.model or ""
        if call.headers.get("content-encoding"):
            m.labels(model, "bypass").inc()  # compressed bodies are not canonicalised
            return await self._send(call, fwd, ranked, version, arm, now)
        key = cache_key(model, version, call.signature, call.method, call.protocol, call.body)
        if "no-cache" not in call.headers.get("cache-control", ""):
            entry = await cache.lookup(key)
            if entry is not None:
                m.labels(model, "hit").inc()
                return Answer.from_cache(entry.status, entry.body, entry.headers, version, arm)
        else:
            m.labels(model, "bypass").inc()

        async def upstream() -> Answer:
            return await self._send(call, fwd, ranked, version, arm, now)

        answer, shared = await cache.coalesce(key, upstream)
        m.labels(model, "coalesced" if shared else "miss").inc()
        if not shared and answer.ok(call.protocol):
            if not cache.store(key, Entry(answer.status, answer.body, answer.cache_headers())):
                m.labels(model, "not_stored").inc()
        return answer

    # ---- resolution --------------------------------------------------------------------

    def _resolve(self, call: Call, router: ModelRouter,
                 now: float) -> tuple[int | None, list[ReplicaState], str]:
        """(version to forward, eligible replicas, split arm) for a call."""
        reps = self.gw.runtime.replicas
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
                    mx = self.gw.metrics
                    mx.child(mx.split_arm, model, t.arm).inc()
                return v, cands, t.arm
            ro = router.cfg.rollout
            if ro is not None and t.arm == ro.canary and any(
                    r.versions.get(model, {}).get(v) == "AVAILABLE" for r in reps.all):
                # The canary is loaded but no replica of it may serve (ejected, failing health):
                # the rollout must see that as a failing canary, not as a quiet one.
                self.gw.rollouts.observe(model, t.arm, False, 0.0)
        return None, [], ""

    async def _unroutable(self, call: Call, fwd: Forwarder, router: ModelRouter,
                          version: int | None, now: float) -> Answer:
        """No replica can serve: relay the replicas' own answer when the model or version does
        not exist (TF Serving's exact 404), else say which model and version are unavailable."""
        reps = self.gw.runtime.replicas
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
        return await self._send(call, fwd, self._any(now), wanted, "", now)

    async def _broadcast(self, call: Call, fwd: Forwarder, now: float) -> Answer:
        """HandleReloadConfigRequest changes a replica's model config: send it to every
        routable replica; the answer is the first failure, or the first success."""
        replicas = self._any(now)
        results = await asyncio.gather(*(self._try(call, fwd, r, None, 30.0) for r in replicas))
        for res in results:
            if isinstance(res, GatewayError):
                raise res
            if not res.ok(call.protocol):
                return res
        first = results[0]
        assert isinstance(first, Answer)
        return first

    def _any(self, now: float) -> list[ReplicaState]:
        reps = self.gw.runtime.replicas.routable(now)
        if not reps:
            reps = [r for r in self.gw.runtime.replicas.all if r.healthy]
        if not reps:
            raise NoReplica("No healthy replica is available")
        self._rr = (self._rr + 1) % len(reps)
        return reps[self._rr:] + reps[:self._rr]

    # ---- upstream ------------------------------------------------------------------------

    async def _send(self, call: Call, fwd: Forwarder, ranked: list[ReplicaState],
                    version: int | None, arm: str, now: float) -> Answer:
        gw = self.gw
        rt = gw.runtime
        budget = gw.retry_budget
        budget.record_call()
        timeout = rt.timeout_for(call.model)
        deadline = now + timeout if call.deadline is None else min(call.deadline, now + timeout)
        cap = rt.cfg.limits.max_in_flight_per_replica
        open_ = [r for r in ranked if r.in_flight < cap]
        # _admit's first step inline: the queue (and its coroutine) only when every replica is full
        ranked = open_ if open_ else await self._admit(ranked, deadline)
        attempts = min(len(ranked), rt.cfg.retries.max_attempts if call.method in IDEMPOTENT else 1)
        hedge = rt.hedge_for(call.model) if call.method in IDEMPOTENT else None
        per_try = rt.cfg.retries.per_try_timeout_s
        hedge_budget = self._hedge_budget(call.model or "", hedge) if hedge is not None else None
        if hedge_budget is not None:
            hedge_budget.record_call()
        last: Answer | GatewayError | None = None
        for i in range(attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("Deadline Exceeded")
            if i > 0:
                if not budget.try_withdraw():
                    gw.metrics.retry_budget_exhausted.labels(gw.model_label(call.model)).inc()
                    break
                gw.metrics.retries.labels(gw.model_label(call.model)).inc()
            if i == 0 and hedge is not None and hedge_budget is not None and len(ranked) > 1:
                result = await self._hedged(call, fwd, ranked[0], ranked[1], version, remaining,
                                            self._hedge_delay(call.model or "", hedge), hedge_budget)
            elif per_try is None:  # _try without a per-try timeout, without its coroutine
                try:
                    result = await self.attempt(call, fwd, ranked[i], version, remaining)
                except (ReplicaUnavailable, DeadlineExceeded) as exc:
                    result = exc
            else:
                result = await self._try(call, fwd, ranked[i], version, remaining)
            if isinstance(result, Answer) and not (fwd.retryable(result) and i + 1 < attempts):
                result.arm = arm
                return result
            last = result
        if isinstance(last, Answer):
            last.arm = arm
            return last
        if isinstance(last, GatewayError):
            raise last
        raise NoReplica("No replica answered")

    async def _admit(self, ranked: list[ReplicaState], deadline: float) -> list[ReplicaState]:
        """Per-replica in-flight cap with a bounded queue (429 / RESOURCE_EXHAUSTED past it)."""
        gw = self.gw
        cap = gw.runtime.cfg.limits.max_in_flight_per_replica
        open_ = [r for r in ranked if r.in_flight < cap]
        if open_:
            return open_
        if gw.queued >= gw.runtime.cfg.limits.max_queue:
            gw.metrics.shed.labels("replicas_full").inc()
            raise Overloaded("All replicas are at their in-flight limit and the queue is full")
        gw.queued += 1
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded("Deadline Exceeded while queued")
                try:
                    await asyncio.wait_for(gw.slot_freed.wait(), remaining)
                except TimeoutError:
                    continue
                open_ = [r for r in ranked if r.in_flight < cap]
                if open_:
                    return open_
        finally:
            gw.queued -= 1

    async def _try(self, call: Call, fwd: Forwarder, replica: ReplicaState, version: int | None,
                   remaining: float) -> Answer | GatewayError:
        """One attempt; a per-try timeout shorter than the deadline turns a hung replica into a
        retryable failure instead of a lost call."""
        per_try = self.gw.runtime.cfg.retries.per_try_timeout_s
        limit = remaining if per_try is None else min(per_try, remaining)
        try:
            answer = await self.attempt(call, fwd, replica, version, limit)
        except ReplicaUnavailable as exc:
            return exc
        except DeadlineExceeded as exc:
            if limit < remaining:
                return ReplicaUnavailable(f"replica {replica.name} did not answer in {limit:.3g} s")
            return exc
        if limit < remaining and answer.status == DEADLINE_CODE and call.protocol == "grpc":
            return ReplicaUnavailable(f"replica {replica.name} did not answer in {limit:.3g} s")
        return answer

    async def _hedged(self, call: Call, fwd: Forwarder, primary: ReplicaState,
                      backup: ReplicaState, version: int | None, remaining: float,
                      delay: float, budget: RetryBudget) -> Answer | GatewayError:
        """Send to `primary`; if it has not answered after `delay`, send a copy to `backup` and
        take the first good answer, cancelling the other (Dean and Barroso, "The Tail at Scale",
        2013). The hedge budget caps the extra load."""
        gw = self.gw
        async with asyncio.TaskGroup() as tg:
            first = tg.create_task(self._try(call, fwd, primary, version, remaining))
            done, _ = await asyncio.wait({first}, timeout=min(delay, remaining))
            if done or not budget.try_withdraw():
                return await first
            gw.metrics.hedges.labels(gw.model_label(call.model)).inc()
            second = tg.create_task(self._try(call, fwd, backup, version, remaining - delay))
            pending = {first, second}
            result: Answer | GatewayError | None = None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    result = t.result()
                    if isinstance(result, Answer) and not fwd.retryable(result):
                        for p in pending:
                            p.cancel()
                        if t is second:
                            gw.metrics.hedge_wins.labels(gw.model_label(call.model)).inc()
                        return result
            assert result is not None
            return result

    def _hedge_budget(self, model: str, hedge: Hedge) -> RetryBudget:
        """Each hedged model's own budget: hedges add at most `budget_ratio` to its calls."""
        b = self._hedge_budgets.get(model)
        if b is None:
            b = self._hedge_budgets[model] = RetryBudget(hedge.budget_ratio, 1.0, time.monotonic)
        b.ratio = hedge.budget_ratio  # a reload may change it; the window carries on
        return b

    def _hedge_delay(self, model: str, hedge: Hedge) -> float:
        if hedge.delay_ms is not None:
            return hedge.delay_ms / 1000.0
        now = time.monotonic()
        cached = self._p95.get(model)
        if cached is None or now - cached[1] > 1.0:
            t = self.gw.traffic.models.get(model)
            p95 = t.latency.p95_ms(now) if t is not None else None
            cached = ((p95 / 1000.0) if p95 else hedge.fallback_ms / 1000.0, now)
            self._p95[model] = cached
        return cached[0]

    async def attempt(self, call: Call, fwd: Forwarder, replica: ReplicaState,
                       version: int | None, timeout: float) -> Answer:
        gw = self.gw
        replica.in_flight += 1
        gw.total_in_flight += 1
        t0 = time.monotonic()
        failed = True
        try:
            answer = await fwd.send(call, replica, version, timeout)
            failed = fwd.retryable(answer)
            return answer
        finally:
            t1 = time.monotonic()
            replica.in_flight -= 1
            gw.total_in_flight -= 1
            if gw.queued:
                gw.wake_queue()
            replica.requests += 1
            if failed:
                self._record_failure(replica, t1)
            else:
                replica.consecutive_errors = 0
                replica.ewma.observe(t1 - t0, t1)
                gw.on_upstream_done(replica, t1 - t0, t1)

    def _record_failure(self, replica: ReplicaState, now: float) -> None:
        replica.errors += 1
        replica.consecutive_errors += 1
        if replica.consecutive_errors < CONSECUTIVE_ERRORS or now < replica.ejected_until:
            return
        reps = self.gw.runtime.replicas
        pool = [r for r in reps.all if r.pool == replica.pool]
        ejected = sum(1 for r in pool if now < r.ejected_until)
        if (ejected + 1) * 2 > len(pool):  # never eject more than half of a pool
            return
        replica.ejections += 1
        replica.ejected_until = now + min(BASE_EJECTION_S * replica.ejections, MAX_EJECTION_S)
        replica.consecutive_errors = 0
        log.warning("ejecting replica %s for %.0f s after repeated failures", replica.name,
                    replica.ejected_until - now)
        self.gw.metrics.replica_ejected.labels(replica.name).set(1)
        reps.rebuild(now)
