"""Feeds the pure scale logic (gateway.scaling) from live traffic and publishes its decisions.

Per pool: a SignalWindow of upstream latencies (cache hits never reach it: they are not replica
load), in-flight calls as queue depth, GPU/CPU utilisation from the replicas' scraped metrics and
RPS against the healthy replicas' summed capacity. The window spans the pool's shorter
stabilisation window, within [5, 60] s (`signal_window_s`). Every `scale_eval_s` seconds each pool's
ScaleController decides; the decision goes to Prometheus gauges, `GET /api/scale` and, when it
changes, to the configured webhooks. A webhook body is the pool's /api/scale object plus "event",
"pool" and "seq", a per-pool number that grows by one with each transition this process sends:
retried deliveries can arrive out of order, and "seq" says which is the latest.

Several gateways (pods on one Redis, the workers of `--workers N`) decide as one: each publishes
its pools' load facts (requests, rps, the latency histogram of its window, calls in flight) to
the shared store every round; each merges every live instance's facts into the fleet's signals
(rps and queue depth add up, p95 comes from the summed histograms: what one gateway taking all
the traffic would measure). One instance at a time holds the "scale" lease: it decides, stores
the decision and sends the webhooks; the others serve the stored decision, so every gateway
answers `/api/scale` with the same `desired_replicas`. When the store is unreachable each
process decides from its own traffic, as a single gateway does.

What must always hold: a signal whose source is not configured is left out of the decision; a
configured source that stops answering is unknown (None), and unknown never drives a scale-down;
only the lease holder (or a process without a store) notifies webhooks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.config import GatewayConfig
from gateway.core.metrics import Metrics
from gateway.core.shared import SharedStore
from gateway.core.tasks import spawn
from gateway.fleet.replicas import ReplicaSet, ReplicaState
from gateway.scaling import (
    METRICS,
    PoolScalePolicy,
    ScaleController,
    ScaleDecision,
    Signals,
    SignalWindow,
    policy_from_mapping,
)
from gateway.scaling.brownout import BrownoutLevels, saturated

log = logging.getLogger("infergate.scale")

MIN_SIGNAL_WINDOW_S = 5
MAX_SIGNAL_WINDOW_S = 60


def signal_window_s(policy: PoolScalePolicy) -> int:
    """Seconds of traffic a pool's p95 and rps are measured over: its shorter stabilisation
    window, kept within [MIN_SIGNAL_WINDOW_S, MAX_SIGNAL_WINDOW_S].

    A window longer than the stabilisation windows would keep a load that has stopped in view
    past them (a 60 s p95 holds a finished burst for a minute, whatever window_down_s says); one
    under 5 s lets the second just begun, nearly empty, weigh too much in rps. The defaults
    (60 s up, 300 s down) give 60 s.
    """
    shorter = min(policy.window_up_s, policy.window_down_s)
    return int(min(MAX_SIGNAL_WINDOW_S, max(MIN_SIGNAL_WINDOW_S, math.ceil(shorter))))


def _pool_value(reps: list[ReplicaState], attr: str) -> tuple[bool, float | None]:
    """(configured, value): mean over replicas when every configured one is known."""
    configured = False
    values: list[float] = []
    unknown = False
    for r in reps:
        if r.cfg.metrics is None:
            continue
        fresh = r.load_fresh()
        v = getattr(r.gpu, attr)
        if fresh and v is None:
            continue  # the source answers but does not export this figure: not configured here
        configured = True
        if fresh and v is not None:
            values.append(float(v))
        else:
            unknown = True
    if not configured:
        return False, None
    if unknown or not values:
        return True, None
    return True, sum(values) / len(values)


class FleetView(Protocol):
    """What the scale service reads: the config in force and the replicas it built."""

    @property
    def cfg(self) -> GatewayConfig: ...

    @property
    def replicas(self) -> ReplicaSet: ...


class ScaleService:
    def __init__(self, view: Callable[[], FleetView], metrics: Metrics,
                 notify: Callable[[dict[str, Any]], None],
                 shared: SharedStore | None = None) -> None:
        self._view = view  # the current Runtime: a reload swaps it
        self.metrics = metrics
        self._notify = notify  # webhooks
        self.shared = shared
        self.fleet: dict[str, Any] = {"instances": 1, "role": "alone"}
        self._served: dict[str, dict[str, Any]] | None = None  # the leader's, when following
        self.brownout = BrownoutLevels()
        self.windows: dict[str, SignalWindow] = {}
        self.controllers: dict[str, ScaleController] = {}
        self.decisions: dict[str, ScaleDecision] = {}
        self._sent: dict[str, tuple[int, str]] = {}
        self._seq: dict[str, int] = {}
        self._direction_labels: dict[str, tuple[str, str, str]] = {}
        self.configure()

    def pools(self) -> list[str]:
        cfg = self._view().cfg
        return sorted({r.pool for r in cfg.replicas} | set(cfg.autoscale))

    def configure(self) -> None:
        """(Re)build controllers from the current config, keeping history, and windows whose
        length the new policy keeps."""
        cfg = self._view().cfg
        controllers: dict[str, ScaleController] = {}
        for pool in self.pools():
            raw = cfg.autoscale[pool].model_dump() if pool in cfg.autoscale else {}
            policy = policy_from_mapping(raw, f"autoscale.{pool}")
            old = self.controllers.get(pool)
            controllers[pool] = old.carry_over(policy) if old else ScaleController(policy)
            span = signal_window_s(policy)
            window = self.windows.get(pool)
            if window is None or window.window_s != span:
                self.windows[pool] = SignalWindow(span, started_at=time.monotonic())
        self.controllers = controllers

    def observe(self, pool: str, seconds: float, now: float) -> None:
        """One call answered by a replica of `pool` in `seconds`, completed at `now`."""
        w = self.windows.get(pool)
        if w is not None:
            w.observe(seconds * 1000.0, now)

    def facts(self, pool: str, now: float) -> dict[str, Any]:
        """This process's load on `pool` as it publishes it for the fleet."""
        count, rps, hist = self.windows[pool].snapshot(now)
        queue = sum(r.in_flight for r in self._view().replicas.all if r.pool == pool)
        return {"count": count, "rps": rps, "queue": queue,
                "hist": {str(k): v for k, v in hist.items()}}

    def merged(self, pool: str, peers: dict[str, dict[str, Any]]) -> tuple[float, float, float | None]:
        """(rps, queue depth, p95 ms) of `pool` over every instance's published facts."""
        rps = queue = 0.0
        hist: dict[int, int] = {}
        for doc in peers.values():
            f = (doc.get("pools") or {}).get(pool)
            if not isinstance(f, dict):
                continue
            rps += float(f.get("rps", 0.0))
            queue += float(f.get("queue", 0))
            for k, v in (f.get("hist") or {}).items():
                hist[int(k)] = hist.get(int(k), 0) + int(v)
        return rps, queue, self.windows[pool].merged_quantile(hist, 0.95)

    def signals(self, pool: str, now: float,
                fleet: tuple[float, float, float | None] | None = None) -> tuple[Signals, int]:
        reps = [r for r in self._view().replicas.all if r.pool == pool]
        healthy = [r for r in reps if r.healthy]
        w = self.windows[pool]
        configured = set(METRICS)
        gpu_conf, gpu = _pool_value(reps, "util")
        cpu_conf, cpu = _pool_value(reps, "cpu_util")
        if not gpu_conf:
            configured.discard("gpu_util")
        if not cpu_conf:
            configured.discard("cpu_util")
        caps = [r.cfg.capacity_rps for r in healthy if r.cfg.capacity_rps]
        if not any(r.cfg.capacity_rps for r in reps):
            configured.discard("rps_ratio")
        if fleet is None:
            rps, queue, p95 = w.rps(now), float(sum(r.in_flight for r in reps)), w.p95_ms(now)
        else:
            rps, queue, p95 = fleet
        sig = Signals(
            p95_latency_ms=p95, queue_depth=queue,
            gpu_util=gpu, cpu_util=cpu, rps=rps,
            capacity_rps=float(sum(caps)) if caps else (0.0 if "rps_ratio" in configured else None),
            configured=frozenset(configured))
        return sig, len(healthy)

    def evaluate(self, peers: dict[str, dict[str, Any]] | None = None,
                 notify: bool = True) -> None:
        """Decide every pool from this process's traffic, or from the fleet's (`peers`: every
        live instance's published facts, this one's included)."""
        now = time.monotonic()
        for pool, ctl in self.controllers.items():
            fleet = self.merged(pool, peers) if peers is not None else None
            sig, current = self.signals(pool, now, fleet)
            self.brownout.update(pool, saturated(sig, ctl.policy), ctl.policy, now)
            d = ctl.evaluate(sig, current, now)
            self.decisions[pool] = d
            if notify:
                self._publish_gauges(pool, d.to_json())
                # The webhook body is the pool's /api/scale object (brownout level included).
                self._send_webhook(pool, {**d.to_json(),
                                          "brownout": round(self.brownout.level(pool), 4)})

    def _publish_gauges(self, pool: str, d: dict[str, Any]) -> None:
        m = self.metrics
        m.scale_desired.labels(pool).set(d["desired_replicas"])
        m.scale_current.labels(pool).set(d["current_replicas"])
        for key, value in (d.get("signals") or {}).items():
            m.scale_signal.labels(pool, key).set(math.nan if value is None else float(value))
        # The reason's metric name, not its text, is the label: bounded cardinality.
        reason = str(d.get("reason") or "")
        label = (pool, str(d["direction"]), reason.split(" ", 1)[0] if reason else "")
        old = self._direction_labels.get(pool)
        if old is not None and old != label:
            m.scale_direction.remove(*old)
        self._direction_labels[pool] = label
        m.scale_direction.labels(*label).set(1)

    def _send_webhook(self, pool: str, d: dict[str, Any]) -> None:
        mark = (int(d["desired_replicas"]), str(d["direction"]))
        if self._sent.get(pool) != mark:
            prev = self._sent.get(pool)
            self._sent[pool] = mark
            if prev is not None:
                seq = self._seq[pool] = self._seq.get(pool, 0) + 1
                self._notify({"event": "scale", "pool": pool, "seq": seq, **d})

    def max_age_s(self) -> float:
        """How long an instance's facts (and the lease) outlive its last round."""
        return 3 * self._view().cfg.scale_eval_s + 1.0

    async def tick(self) -> None:
        """One round: alone, decide; in a fleet, publish, merge, and decide or follow."""
        shared = self.shared
        if shared is None:
            self.evaluate()
            return
        now = time.monotonic()
        mine = {"pools": {p: self.facts(p, now) for p in self.controllers}}
        await shared.publish("scale", mine)
        peers = await shared.collect("scale", self.max_age_s())
        if peers is None:  # the store is unreachable: this process decides alone
            self._served = None
            self.fleet = {"instances": 1, "role": "alone", "store": "unreachable"}
            self.evaluate()
            return
        peers[shared.instance] = mine
        leader = await shared.lease("scale", self.max_age_s())
        if leader:
            self._served = None
            self.evaluate(peers)
            await shared.put("scale-decisions", {"at": time.time(), "leader": shared.instance,
                                                 **self.to_json()})
            self.fleet = {"instances": len(peers), "role": "leader"}
            return
        self.evaluate(peers, notify=False)  # kept warm: ready to lead when the lease moves
        doc = await shared.get("scale-decisions")
        pools = doc.get("pools") if doc else None
        if (doc is not None and isinstance(pools, dict)
                and time.time() - float(doc.get("at", 0)) <= self.max_age_s()):
            self._served = {p: d for p, d in pools.items() if isinstance(d, dict)}
            self.fleet = {"instances": len(peers), "role": "follower",
                          "leader": doc.get("leader")}
        else:
            self._served = None
            self.fleet = {"instances": len(peers), "role": "follower", "leader": None}
        for pool, d in (self._served or {p: x.to_json() for p, x in self.decisions.items()}
                        ).items():
            self._publish_gauges(pool, d)

    def to_json(self) -> dict[str, Any]:
        pools = (self._served if self._served is not None
                 else {p: d.to_json() for p, d in self.decisions.items()})
        pools = {p: {**d, "brownout": round(self.brownout.level(p), 4)} for p, d in pools.items()}
        if self.shared is None:
            return {"pools": pools}  # the contract's shape, exactly (KEDA's metrics-api reads it)
        return {"pools": pools, "fleet": self.fleet}

    def start(self) -> asyncio.Task[None]:
        return spawn(self._loop(), "scale-eval")

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except ValueError:
                log.exception("scale evaluation failed")
            await asyncio.sleep(self._view().cfg.scale_eval_s)
