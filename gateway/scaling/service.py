"""Feeds the pure scale logic (gateway.scaling) from live traffic and publishes its decisions.

Per pool: a SignalWindow of upstream latencies (cache hits never reach it: they are not replica
load), in-flight calls as queue depth, GPU/CPU utilisation from the replicas' scraped metrics and
RPS against the healthy replicas' summed capacity. The window spans the pool's shorter
stabilisation window, within [5, 60] s (`signal_window_s`). Every `scale_eval_s` seconds each pool's
ScaleController decides; the decision goes to Prometheus gauges, `GET /api/scale` and, when it
changes, to the configured webhooks. A webhook body is the pool's /api/scale object plus "event",
"pool" and "seq", a per-pool number that grows by one with each transition this process sends:
retried deliveries can arrive out of order, and "seq" says which is the latest.

What must always hold: a signal whose source is not configured is left out of the decision; a
configured source that stops answering is unknown (None), and unknown never drives a scale-down.
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
                 notify: Callable[[dict[str, Any]], None]) -> None:
        self._view = view  # the current Runtime: a reload swaps it
        self.metrics = metrics
        self._notify = notify  # webhooks
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

    def signals(self, pool: str, now: float) -> tuple[Signals, int]:
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
        sig = Signals(
            p95_latency_ms=w.p95_ms(now), queue_depth=float(sum(r.in_flight for r in reps)),
            gpu_util=gpu, cpu_util=cpu, rps=w.rps(now),
            capacity_rps=float(sum(caps)) if caps else (0.0 if "rps_ratio" in configured else None),
            configured=frozenset(configured))
        return sig, len(healthy)

    def evaluate(self) -> None:
        now = time.monotonic()
        m = self.metrics
        for pool, ctl in self.controllers.items():
            sig, current = self.signals(pool, now)
            d = ctl.evaluate(sig, current, now)
            self.decisions[pool] = d
            m.scale_desired.labels(pool).set(d.desired_replicas)
            m.scale_current.labels(pool).set(d.current_replicas)
            for key, value in sig.to_json().items():
                m.scale_signal.labels(pool, key).set(math.nan if value is None else float(value))
            # The reason's metric name, not its text, is the label: bounded cardinality.
            label = (pool, d.direction, d.reason.split(" ", 1)[0] if d.reason else "")
            old = self._direction_labels.get(pool)
            if old is not None and old != label:
                m.scale_direction.remove(*old)
            self._direction_labels[pool] = label
            m.scale_direction.labels(*label).set(1)
            mark = (d.desired_replicas, d.direction)
            if self._sent.get(pool) != mark:
                prev = self._sent.get(pool)
                self._sent[pool] = mark
                if prev is not None:
                    seq = self._seq[pool] = self._seq.get(pool, 0) + 1
                    self._notify(
                        {"event": "scale", "pool": pool, "seq": seq, **d.to_json()})

    def to_json(self) -> dict[str, Any]:
        return {"pools": {p: d.to_json() for p, d in self.decisions.items()}}

    def start(self) -> asyncio.Task[None]:
        return spawn(self._loop(), "scale-eval")

    async def _loop(self) -> None:
        while True:
            try:
                self.evaluate()
            except ValueError:
                log.exception("scale evaluation failed")
            await asyncio.sleep(self._view().cfg.scale_eval_s)
