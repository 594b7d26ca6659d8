"""Sending a routed call upstream: the per-replica in-flight cap, retries within a budget,
per-try timeouts and hedging. The pipeline hands it a ranked list of replicas.

What must always hold:
- a replica's in-flight count is incremented before a send and decremented after it, whatever
  happens (cancellation included), and every outcome reaches the outlier detector;
- a connection that could not be opened (ConnectFailed: nothing was sent) is retried on the
  next ranked replica for every method, outside the retry budget and the attempt count, and
  marks the replica down at once;
- any other retry goes to a different replica, only for idempotent methods, only on a dropped
  call or UNAVAILABLE/503, only within the retry budget, the attempt limit and the deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable

from gateway.config import Hedge, Retries
from gateway.core.call import IDEMPOTENT, TRY_KIND, Answer, Call, Forwarder
from gateway.core.errors import (
    ConnectFailed,
    DeadlineExceeded,
    GatewayError,
    NoReplica,
    ReplicaUnavailable,
    TryTimedOut,
)
from gateway.core.metrics import Metrics
from gateway.fleet.outlier import OutlierDetector
from gateway.fleet.replicas import ReplicaState
from gateway.observe import Tracer
from gateway.routing.admission import Admission
from gateway.routing.budget import RetryBudget
from gateway.routing.runtime import Runtime
from gateway.routing.tenants import TenantBook

DEADLINE_CODE = 4  # grpc.StatusCode.DEADLINE_EXCEEDED

# Completion hook of every upstream answer: (replica, seconds, monotonic now).
UpstreamDone = Callable[[ReplicaState, float, float], None]


class Dispatcher:
    def __init__(self, runtime: Callable[[], Runtime], metrics: Metrics, admission: Admission,
                 outlier: OutlierDetector, p95_ms: Callable[[str, float], float | None],
                 on_done: UpstreamDone, model_label: Callable[[str | None], str],
                 tenants: TenantBook | None = None) -> None:
        self._runtime = runtime
        self.metrics = metrics
        self.admission = admission
        self.outlier = outlier
        self._p95_ms = p95_ms  # a model's recent p95 (the hedge delay when none is configured)
        self._on_done = on_done
        self._label = model_label
        self.tenants = tenants
        retries = runtime().cfg.retries
        self.budget = RetryBudget(retries.budget_ratio, retries.min_per_s, time.monotonic)
        self._p95: dict[str, tuple[float, float]] = {}
        self._hedge_budgets: dict[str, RetryBudget] = {}

    def trace(self, tracer: Tracer) -> None:
        """Tracing on: every try (retries, hedges and shadow copies go through `attempt`) runs
        in a client span and sends it as the replica's traceparent. Off, this is never called
        and `attempt` stays the plain method."""
        if "attempt" not in vars(self):
            self.attempt = tracer.traced_attempt(self.attempt)  # type: ignore[method-assign,assignment]

    def configure(self, retries: Retries) -> None:
        """A reload: the budget's settings change, its window carries on."""
        self.budget.ratio = retries.budget_ratio
        self.budget.min_per_s = retries.min_per_s

    async def send(self, call: Call, fwd: Forwarder, ranked: list[ReplicaState],
                   version: int | None, arm: str, now: float) -> Answer:
        rt = self._runtime()
        budget = self.budget
        budget.record_call()
        timeout = rt.timeout_for(call.model)
        deadline = now + timeout if call.deadline is None else min(call.deadline, now + timeout)
        limits = rt.cfg.limits
        cap = limits.max_in_flight_per_replica
        open_ = [r for r in ranked if r.in_flight < cap]
        # The queue (and its coroutine) only when every replica is full, or calls wait already.
        ranked = (open_ if open_ and not self.admission.queued
                  else await self._queue(call, ranked, cap, limits.max_queue, deadline))
        idempotent = call.method in IDEMPOTENT
        attempts = min(len(ranked), rt.cfg.retries.max_attempts if idempotent else 1)
        hedge = rt.hedge_for(call.model) if idempotent else None
        per_try = rt.cfg.retries.per_try_timeout_s
        hedge_budget = self._hedge_budget(call.model or "", hedge) if hedge is not None else None
        if hedge_budget is not None:
            hedge_budget.record_call()
        last: Answer | GatewayError | None = None
        tried = 0  # attempts that reached a replica (refused connections do not count)
        retrying = None  # TRY_KIND's token once a second replica is tried
        try:
            for i, replica in enumerate(ranked):
                if tried >= attempts:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded("Deadline Exceeded")
                if i > 0 and retrying is None:
                    retrying = TRY_KIND.set("retry")
                if tried > 0 and not isinstance(last, ConnectFailed):
                    if not budget.try_withdraw():
                        self.metrics.retry_budget_exhausted.labels(
                            self._label(call.model)).inc()
                        break
                    self.metrics.retries.labels(self._label(call.model)).inc()
                if (tried == 0 and hedge is not None and hedge_budget is not None
                        and i + 1 < len(ranked)):
                    result = await self._hedged(call, fwd, replica, ranked[i + 1], version,
                                                remaining, self._hedge_delay(call.model or "", hedge),
                                                hedge_budget)
                elif per_try is None:  # try() without a per-try timeout, without its coroutine
                    try:
                        result = await self.attempt(call, fwd, replica, version, remaining)
                    except (ReplicaUnavailable, DeadlineExceeded) as exc:
                        result = exc
                else:
                    result = await self.try_once(call, fwd, replica, version, remaining)
                if isinstance(result, ConnectFailed):
                    # Nothing was sent: the next replica, for any method, outside the budget.
                    self.metrics.retries.labels(self._label(call.model)).inc()
                    if last is None or isinstance(last, ConnectFailed):
                        last = result
                    continue
                tried += 1
                if isinstance(result, Answer) and not (fwd.retryable(result)
                                                       and tried < attempts):
                    result.arm = arm
                    return result
                last = result
            if isinstance(last, Answer):
                last.arm = arm
                return last
            if isinstance(last, GatewayError):
                raise last
            raise NoReplica("No replica answered")
        finally:
            if retrying is not None:
                TRY_KIND.reset(retrying)

    async def _queue(self, call: Call, ranked: list[ReplicaState], cap: int, max_queue: int,
                     deadline: float) -> list[ReplicaState]:
        """Wait for a replica slot in the fair queue (by the call's tenant and priority)."""
        tenants, name = self.tenants, call.tenant
        if tenants is None or not name:
            return await self.admission.wait_for_slot(
                ranked, cap, max_queue, deadline, priority=call.headers.get("x-priority", "standard"))
        t0 = time.monotonic()
        try:
            return await self.admission.wait_for_slot(
                ranked, cap, max_queue, deadline, name, tenants.weight(name),
                tenants.priority(name, call.headers))
        finally:
            tenants.queued(name, time.monotonic() - t0)

    async def try_once(self, call: Call, fwd: Forwarder, replica: ReplicaState,
                       version: int | None, remaining: float) -> Answer | GatewayError:
        """One attempt; a per-try timeout shorter than the deadline turns a hung replica into a
        retryable failure instead of a lost call."""
        per_try = self._runtime().cfg.retries.per_try_timeout_s
        limit = remaining if per_try is None else min(per_try, remaining)
        try:
            answer = await self.attempt(call, fwd, replica, version, limit)
        except ReplicaUnavailable as exc:
            return exc
        except DeadlineExceeded as exc:
            if limit < remaining:
                return TryTimedOut(f"replica {replica.name} did not answer in {limit:.3g} s")
            return exc
        if limit < remaining and answer.status == DEADLINE_CODE and call.protocol == "grpc":
            return TryTimedOut(f"replica {replica.name} did not answer in {limit:.3g} s")
        return answer

    async def _hedged(self, call: Call, fwd: Forwarder, primary: ReplicaState,
                      backup: ReplicaState, version: int | None, remaining: float,
                      delay: float, budget: RetryBudget) -> Answer | GatewayError:
        """Send to `primary`; if it has not answered after `delay`, send a copy to `backup` and
        take the first good answer, cancelling the other (Dean and Barroso, "The Tail at Scale",
        2013). The hedge budget caps the extra load."""
        async with asyncio.TaskGroup() as tg:
            first = tg.create_task(self.try_once(call, fwd, primary, version, remaining))
            done, _ = await asyncio.wait({first}, timeout=min(delay, remaining))
            if done or not budget.try_withdraw():
                return await first
            self.metrics.hedges.labels(self._label(call.model)).inc()
            copy = contextvars.copy_context()
            copy.run(TRY_KIND.set, "hedge")
            second = tg.create_task(self.try_once(call, fwd, backup, version, remaining - delay),
                                    context=copy)
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
                            self.metrics.hedge_wins.labels(self._label(call.model)).inc()
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
            p95 = self._p95_ms(model, now)
            cached = ((p95 / 1000.0) if p95 else hedge.fallback_ms / 1000.0, now)
            self._p95[model] = cached
        return cached[0]

    async def attempt(self, call: Call, fwd: Forwarder, replica: ReplicaState,
                      version: int | None, timeout: float) -> Answer:
        replica.in_flight += 1
        admission = self.admission
        admission.started()
        t0 = time.monotonic()
        failed = True
        refused = False
        cancelled = False
        try:
            answer = await fwd.send(call, replica, version, timeout)
            failed = fwd.retryable(answer)
            return answer
        except ConnectFailed:
            refused = True
            raise
        except asyncio.CancelledError:
            # The losing copy of a hedge, or a caller gone: says nothing about the replica.
            failed = False
            cancelled = True
            raise
        finally:
            t1 = time.monotonic()
            replica.in_flight -= 1
            admission.finished()
            replica.requests += 1
            if call.tenant and self.tenants is not None:
                self.tenants.replica_seconds(call.tenant, t1 - t0)
            if refused:
                self.outlier.on_refused(replica, t1)
            elif failed:
                self.outlier.on_failure(replica, t1)
            elif cancelled:
                # Neither a failure nor a latency sample, but the replica took at least this
                # long: a stalled replica whose calls are hedged away is still learned slow.
                replica.ewma.at_least(t1 - t0, t1)
            else:
                self.outlier.on_success(replica)
                replica.ewma.observe(t1 - t0, t1)
                self._on_done(replica, t1 - t0, t1)
