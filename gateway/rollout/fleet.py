"""One canary analysis for a fleet of gateways: this process's side of it.

Every process (a pod on one Redis, a worker of `--workers N`) publishes, each tick, what its
controllers measured in their current step (calls, errors, latency histograms, agreement) under
the topic "rollout-stats" of the shared store. Each one pools the published statistics of every
instance, its own included, that were measured in the same step: the same `step_key` (rollout
identity, step, step start), so calls of another step, or of another rollout of the model, are
never mixed in. The pool is what one gateway taking all the fleet's calls would have measured
(histograms share one bucket layout and add up).

One process at a time holds the lease "rollout" (about three tick intervals, renewed each tick):
the leader judges the pooled statistics and writes its decisions through the `RolloutStore`
(compare-and-set); the others follow the stored state, polled every tick, and report the pooled
statistics too, so every gateway's /api/rollouts says the same within a tick. A leader that dies
stops renewing; the next process to ask after the lease expires takes it over and continues
from the stored state. When the shared store cannot be reached every process decides alone from
its own calls, as a single gateway does, until it is back.

What must always hold: nothing here raises into the manager (the shared store answers failures
as None or False, and a malformed peer document is skipped); this module decides nothing, it
measures the fleet and says who may decide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from gateway.core.shared import SharedStore
from gateway.rollout.controller import RolloutController
from gateway.rollout.stats import RolloutStats
from gateway.rollout.store import superseded

log = logging.getLogger("infergate.rollout")

Role = Literal["leader", "follower", "alone"]
TOPIC = "rollout-stats"
LEASE = "rollout"
# A dead process's measurements of the current step are still measurements of it: they stay in
# the pool until the step ends, or this long (the shared store forgets older documents).
KEEP_S = 600.0


class Fleet:
    """Publishes this process's statistics, pools everyone's, and holds or follows the lease."""

    def __init__(self, shared: SharedStore, interval_s: float = 1.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.shared = shared
        # Liveness is wall-clock time, as the shared store's own ages and leases are.
        self.wall = wall
        self.interval_s = interval_s
        # Until the first round says otherwise this process neither decides nor leads.
        self.role: Role = "follower"
        self.instances = 1
        self.reachable = True
        self._pooled: dict[str, tuple[str, RolloutStats]] = {}  # model -> (step key, pool)

    @property
    def ttl_s(self) -> float:
        """How long the lease outlives its holder's last tick, and an instance counts as live."""
        return 3 * self.interval_s

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"instances": self.instances, "role": self.role}
        if not self.reachable:
            out["store"] = "unreachable"
        return out

    async def sync(self, controllers: Mapping[str, RolloutController]) -> Role:
        """One round: publish, pool, and try to take or renew the lease. Returns the role."""
        now = self.wall()
        mine: dict[str, Any] = {"at": now, "models": {
            name: {"step": ctl.step_key, "stats": ctl.stats.to_json()}
            for name, ctl in controllers.items()}}
        await self.shared.publish(TOPIC, mine)
        docs = await self.shared.collect(TOPIC, KEEP_S)
        if docs is None:
            self.role, self.instances, self.reachable = "alone", 1, False
            self._pooled.clear()
            return self.role
        docs[self.shared.instance] = mine  # our own, even if the store has not shown it yet
        self.reachable = True
        self.instances = sum(1 for d in docs.values() if _at(d) >= now - self.ttl_s)
        self._pooled = {name: (ctl.step_key, pool(name, ctl.step_key, docs.values()))
                        for name, ctl in controllers.items()}
        self.role = "leader" if await self.shared.lease(LEASE, self.ttl_s) else "follower"
        return self.role

    def pooled(self, ctl: RolloutController) -> RolloutStats | None:
        """The fleet's statistics of `ctl`'s current step, or None (alone, or not pooled yet)."""
        if self.role == "alone":
            return None
        got = self._pooled.get(ctl.model)
        return got[1] if got is not None and got[0] == ctl.step_key else None

    def follow_baseline(self, ctl: RolloutController, before: RolloutStats | None) -> None:
        """After `ctl` adopted another step from the store: keep the pooled stable latency of
        the step that ended as the latency baseline, as the deciding controller did."""
        if before is not None and before.stable.latency.n >= ctl.early_sample:
            ctl.baseline = before.stable.latency


def _at(doc: Mapping[str, Any]) -> float:
    try:
        return float(doc.get("at", 0.0))
    except (TypeError, ValueError):
        return 0.0


def pool(model: str, key: str, docs: Any) -> RolloutStats:
    """The sum of the statistics that `docs` (published documents) hold for `model` under the
    step `key`; documents of other steps, and malformed ones, count nothing."""
    out = RolloutStats()
    for doc in docs:
        try:
            entry = doc["models"][model]
            if entry["step"] != key:
                continue
            out.merge(RolloutStats.from_json(entry["stats"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


class SharedRolloutStore:
    """A `RolloutStore` over the shared store's documents, for a fleet given no store of its
    own (the workers of `--workers N` without Redis and without a state file).

    The compare and the write are two steps, not one: two processes saving the same rollout in
    the same instant may both succeed, and the later write stands. With one leader deciding
    that needs an operator action and a decision in the same instant; a `FileRolloutStore` in
    the workers' folder, or Redis, has none of it.
    """

    def __init__(self, shared: SharedStore, prefix: str = "rollout-state-") -> None:
        self.shared = shared
        self.prefix = prefix

    async def load(self, model: str) -> dict[str, Any] | None:
        return await self.shared.get(self.prefix + model)

    async def save(self, model: str, state: dict[str, Any]) -> bool:
        if superseded(await self.shared.get(self.prefix + model), state):
            return False
        return await self.shared.put(self.prefix + model, state)

    async def close(self) -> None:
        return None  # the shared store belongs to the gateway, which closes it
