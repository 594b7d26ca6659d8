"""What the fleet cost over the last hour, and which calls it was spent on (pure: no I/O, no
clock of its own; every method is handed `now`, a monotonic time in seconds).

Prices come from the config: a replica's own `cost_per_hour`, else its pool's
(`pools.NAME.cost_per_hour`), else none: an unpriced replica is left out of every figure and named
in `unpriced` (its calls are counted as `unpriced_calls`, never as free ones). A replica accrues
its price for every second it is in the fleet (its config is live), busy or not.

Time is cut into buckets (`bucket_s`, a minute by default) and the window is the last
`window_s / bucket_s` of them, the current one included: memory is bounded by buckets x
(replicas x models + models x key labels), and the figures cover between window_s - bucket_s and
window_s seconds of history (`covered_s` says how much the ledger has seen).

Attribution: in each bucket, a replica's cost is shared among the calls it answered in that
bucket, in proportion to calls. A replica that answered no call in a bucket was idle: that
bucket's cost of it goes to its pool's `idle_cost`. Calls, not replica-seconds, because:
- the completion hook that measures upstream seconds does not know the model, and the hook that
  knows the model measures gateway-side time (admission queueing, retries on other replicas,
  hedges, fallback tiers): weighting by it would charge a model for time its calls spent
  elsewhere; calls are exact and reconcile with infergate_requests_total;
- models whose calls differ much in cost usually live in different pools (GPU and CPU), where
  the per-pool split already separates them; within one replica, a call share is the stated
  approximation. Upstream seconds are still recorded per replica (`busy_s`): they show how much
  of the paid time was spent answering.
Cache hits cost no replica time and are not fed in; a fallback or brownout call is charged to the
replica (and so the pool) that answered it.

Several gateways (pods on one Redis, the workers of `--workers N`) share one fleet: each counts
only the calls it sent, so each publishes its calls per replica and bucket (`served_counts`) and
hands the others' to `report` (`peers`). A replica's cost in a bucket is then shared among every
gateway's calls to it: this gateway's models get their part, the others' part is `peer_cost`, and
a replica counts as idle only when no gateway sent it a call. Buckets line up across gateways
because the feed gives wall-clock times.

Per API key (a bounded label, never the key): each call made with a key gets the same share of
its replica's cost as any other call there, so a model's key labels add up to its cost when all
its calls carry a key.

What must always hold: for each pool, the cost attributed to models plus `peer_cost` plus
`idle_cost` equals the pool's `cost` (float rounding aside; `peer_cost` is 0 without peers); a
price change applies from the moment it is configured (the past keeps the price it accrued at);
nothing grows without bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import GatewayConfig

HOUR_S = 3600.0

# Other gateways' calls, as they publish them: bucket index -> replica -> calls.
PeerCounts = Mapping[int, Mapping[str, int]]


@dataclass(frozen=True, slots=True)
class ReplicaPrice:
    name: str
    pool: str
    cost_per_hour: float | None  # None: no price anywhere in the config


def prices(cfg: GatewayConfig) -> list[ReplicaPrice]:
    """Each replica's price: its own, else its pool's, else None (discovered replicas included
    when `cfg` is the effective config, as the Runtime holds it)."""
    out = []
    for r in cfg.replicas:
        pool = cfg.pools.get(r.pool)
        price = r.cost_per_hour if r.cost_per_hour is not None else (
            pool.cost_per_hour if pool is not None else None)
        out.append(ReplicaPrice(r.name, r.pool, price))
    return out


@dataclass(slots=True)
class _Bucket:
    cost: dict[str, float] = field(default_factory=dict)  # replica -> money accrued here
    pool: dict[str, str] = field(default_factory=dict)  # replica -> its pool while it accrued
    busy: dict[str, float] = field(default_factory=dict)  # replica -> upstream seconds
    calls: dict[tuple[str, str], int] = field(default_factory=dict)  # (replica, model)
    keyed: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (replica, model, key)


@dataclass(slots=True)
class PoolCost:
    cost_per_hour: float  # what its priced replicas cost now, together
    replicas: int  # priced replicas in it now
    cost: float = 0.0  # accrued over the window
    idle_cost: float = 0.0  # the part no call was served with
    peer_cost: float = 0.0  # the part other gateways' calls were served with
    busy_s: float = 0.0  # upstream seconds its replicas spent answering


@dataclass(slots=True)
class Share:
    calls: int = 0
    cost: float = 0.0

    @property
    def cost_per_1k(self) -> float | None:
        return self.cost * 1000.0 / self.calls if self.calls else None


@dataclass(slots=True)
class ModelCost:
    calls: int = 0  # answered by priced replicas
    cost: float = 0.0
    unpriced_calls: int = 0
    by_pool: dict[str, Share] = field(default_factory=dict)
    by_key: dict[str, Share] = field(default_factory=dict)

    @property
    def cost_per_1k(self) -> float | None:
        return self.cost * 1000.0 / self.calls if self.calls else None


@dataclass(slots=True)
class CostReport:
    window_s: float
    covered_s: float  # how much of the window the ledger has seen
    pools: dict[str, PoolCost]
    models: dict[str, ModelCost]
    unpriced: list[str]
    gateways: int = 1  # this one and the peers whose calls were counted

    @property
    def total(self) -> float:
        return sum(p.cost for p in self.pools.values())

    def to_json(self, currency: str | None = None) -> dict[str, Any]:
        def money(v: float | None) -> float | None:
            return None if v is None else round(v, 6)

        def share(s: Share) -> dict[str, Any]:
            return {"calls": s.calls, "cost": money(s.cost), "cost_per_1k": money(s.cost_per_1k)}

        return {
            "window_s": self.window_s, "covered_s": round(self.covered_s, 3), "currency": currency,
            "gateways": self.gateways,
            "total": {"cost": money(self.total),
                      "idle_cost": money(sum(p.idle_cost for p in self.pools.values())),
                      "peer_cost": money(sum(p.peer_cost for p in self.pools.values()))},
            "pools": {name: {"cost_per_hour": money(p.cost_per_hour), "replicas": p.replicas,
                             "cost": money(p.cost), "idle_cost": money(p.idle_cost),
                             "peer_cost": money(p.peer_cost), "busy_s": round(p.busy_s, 3)}
                      for name, p in sorted(self.pools.items())},
            "models": {name: {"calls": m.calls, "cost": money(m.cost),
                              "cost_per_1k": money(m.cost_per_1k),
                              "unpriced_calls": m.unpriced_calls,
                              "by_pool": {p: share(s) for p, s in sorted(m.by_pool.items())},
                              "by_key": {k: share(s) for k, s in sorted(m.by_key.items())}}
                       for name, m in sorted(self.models.items())},
            "unpriced": self.unpriced,
        }


class CostLedger:
    """Accrues the fleet's cost per replica and counts the calls each replica answered, per
    bucket; `report` attributes one to the other (see the module docstring)."""

    def __init__(self, window_s: float = HOUR_S, bucket_s: float = 60.0) -> None:
        if bucket_s <= 0 or window_s < bucket_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._n = max(1, round(window_s / bucket_s))
        self._roster: dict[str, ReplicaPrice] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._accrued_to: float | None = None  # cost is accrued up to here
        self._started: float | None = None
        # The bucket calls were last counted in, and the times it spans: the per-call feed
        # finds it with two comparisons.
        self._cur: _Bucket | None = None
        self._cur_idx = 0
        self._cur_from = self._cur_to = 0.0

    def configure(self, replicas: Iterable[ReplicaPrice], now: float) -> None:
        """The fleet and its prices from `now` on; what ran before keeps its old price."""
        self._accrue(now)
        self._roster = {r.name: r for r in replicas}

    # ---- the feed (per call: a dict update, nothing more) ------------------------------------

    def served(self, replica: str, model: str, now: float) -> None:
        """A call for `model` answered by `replica` (not from a cache)."""
        b = self._cur
        if b is None or not self._cur_from <= now < self._cur_to:
            b = self._bucket(now)
        calls = b.calls
        key = (replica, model)
        calls[key] = calls.get(key, 0) + 1

    def keyed(self, replica: str, model: str, label: str, now: float) -> None:
        """A call for `model` answered by `replica`, made with the API key labelled `label`."""
        keyed = self._bucket(now).keyed
        key = (replica, model, label)
        keyed[key] = keyed.get(key, 0) + 1

    def busy(self, replica: str, seconds: float, now: float) -> None:
        """`replica` spent `seconds` answering upstream calls."""
        busy = self._bucket(now).busy
        busy[replica] = busy.get(replica, 0.0) + seconds

    # ---- the figures -------------------------------------------------------------------------

    def served_counts(self, now: float) -> dict[int, dict[str, int]]:
        """The calls each replica answered, per live bucket: what this gateway tells its peers."""
        out: dict[int, dict[str, int]] = {}
        for idx, b in self._live(now):
            counts: dict[str, int] = {}
            for (replica, _), n in b.calls.items():
                counts[replica] = counts.get(replica, 0) + n
            if counts:
                out[idx] = counts
        return out

    def report(self, now: float, peers: Iterable[PeerCounts] = ()) -> CostReport:
        """The window's figures; `peers`: the calls other gateways sent the same replicas."""
        peers = list(peers)
        self._accrue(now)
        pools: dict[str, PoolCost] = {}
        for r in self._roster.values():
            if r.cost_per_hour is not None:
                p = pools.setdefault(r.pool, PoolCost(0.0, 0))
                p.cost_per_hour += r.cost_per_hour
                p.replicas += 1
        models: dict[str, ModelCost] = {}
        for idx, b in self._live(now):
            theirs: dict[str, int] = {}
            for peer in peers:
                for replica, n in peer.get(idx, {}).items():
                    theirs[replica] = theirs.get(replica, 0) + n
            self._attribute(b, pools, models, theirs)
        unpriced = sorted(r.name for r in self._roster.values() if r.cost_per_hour is None)
        started = self._started if self._started is not None else now
        return CostReport(self.window_s, min(self.window_s, now - started), pools, models, unpriced,
                          1 + len(peers))

    def _attribute(self, b: _Bucket, pools: dict[str, PoolCost], models: dict[str, ModelCost],
                   theirs: Mapping[str, int]) -> None:
        served: dict[str, int] = dict(theirs)  # every gateway's calls, per replica
        for (replica, _), n in b.calls.items():
            served[replica] = served.get(replica, 0) + n
        for replica, cost in b.cost.items():
            p = pools.setdefault(b.pool[replica], PoolCost(0.0, 0))
            p.cost += cost
            p.busy_s += b.busy.get(replica, 0.0)
            if not served.get(replica):
                p.idle_cost += cost
            elif theirs.get(replica):
                p.peer_cost += cost * theirs[replica] / served[replica]
        for (replica, model), n in b.calls.items():
            m = models.get(model)
            if m is None:
                m = models[model] = ModelCost()
            accrued = b.cost.get(replica)
            if accrued is None:  # unpriced, or not in the fleet while it answered (a removed one)
                m.unpriced_calls += n
                continue
            part = accrued * n / served[replica]
            m.calls += n
            m.cost += part
            s = m.by_pool.setdefault(b.pool[replica], Share())
            s.calls += n
            s.cost += part
        for (replica, model, label), n in b.keyed.items():
            accrued = b.cost.get(replica)
            if accrued is None or not served.get(replica):
                continue  # unpriced (as above), or the answered-call feed has not counted it
            s = models.setdefault(model, ModelCost()).by_key.setdefault(label, Share())
            s.calls += n
            s.cost += accrued * n / served[replica]

    # ---- buckets -----------------------------------------------------------------------------

    def _bucket(self, now: float) -> _Bucket:
        if self._cur_from <= now < self._cur_to and self._cur is not None:
            return self._cur
        idx = math.floor(now / self.bucket_s)
        b = self._cur = self._bucket_at(idx)
        self._cur_idx = idx
        self._cur_from, self._cur_to = idx * self.bucket_s, (idx + 1) * self.bucket_s
        return b

    def _bucket_at(self, idx: int) -> _Bucket:
        b = self._buckets.get(idx)
        if b is None:
            b = self._buckets[idx] = _Bucket()
            self._prune(idx)  # once a bucket: what keeps memory bounded
        return b

    def _prune(self, newest: int) -> None:
        for idx in [i for i in self._buckets if i <= newest - self._n]:
            del self._buckets[idx]
        if self._cur is not None and self._buckets.get(self._cur_idx) is not self._cur:
            self._cur, self._cur_from, self._cur_to = None, 0.0, 0.0

    def _live(self, now: float) -> list[tuple[int, _Bucket]]:
        newest = math.floor(now / self.bucket_s)
        self._prune(newest)
        return [(i, b) for i, b in sorted(self._buckets.items()) if i <= newest]

    def _accrue(self, now: float) -> None:
        """Add each priced replica's cost from the last accrual to `now`, bucket by bucket. The
        bucket of `now` gets an entry even when no time has passed: a replica in the fleet is
        priced in it, so the calls it answers there are not taken for unpriced ones."""
        if self._started is None:
            self._started = now
        start = now if self._accrued_to is None else min(now, max(self._accrued_to,
                                                                    now - self.window_s))
        self._accrued_to = now
        priced: list[tuple[ReplicaPrice, float]] = [
            (r, r.cost_per_hour) for r in self._roster.values() if r.cost_per_hour is not None]
        size = self.bucket_s
        # Integer bucket indices: stepping by recomputing floor(t / size) could stall on a
        # boundary that float division puts a hair below the next bucket.
        for idx in range(math.floor(start / size), math.floor(now / size) + 1):
            seconds = max(0.0, min(now, (idx + 1) * size) - max(start, idx * size))
            b = self._bucket_at(idx)
            for r, price in priced:
                b.cost[r.name] = b.cost.get(r.name, 0.0) + price * seconds / HOUR_S
                b.pool[r.name] = r.pool
