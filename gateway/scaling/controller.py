"""Per-pool scale decisions: signals in, an explained replica count out.

Owns `Signals`, `ScaleDecision` and `ScaleController`. The controller applies the Kubernetes HPA v2
arithmetic of `gateway.scaling.hpa` with the up thresholds as targets, plus the rule of the serving
guide's scaling table that a pool scales down only when EVERY signal is below its down threshold.

Always true:
- pure: no I/O, no clock reads; `now` is passed in (a monotonic clock, seconds) and never goes back;
- a signal whose source is not configured is left out (the caller omits it from
  `Signals.configured`); a configured signal that is None is unknown, and unknown never drives a
  scale-down (it blocks one); no traffic is zero load: with rps 0 an absent p95 counts as 0 ms;
- every decision carries a reason naming the metric and value that drove it and any limit applied;
- scale events for the rate policies are inferred from changes of `current_replicas` between
  evaluations, so recommendations nobody acts on never consume the rate budget;
- one documented departure from the HPA controller: a new controller counts `current_replicas` as a
  recommendation for scale-down stabilisation, so a restarted gateway waits `window_down_s` before
  recommending fewer replicas (the HPA controller forgets its window on restart and may drop at once).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.config.autoscale import METRICS, PoolScalePolicy
from gateway.scaling.hpa import (
    Recommendation,
    ScaleEvent,
    metric_proposal,
    scale_down_limit,
    scale_up_limit,
    stabilize,
)

Direction = Literal["up", "down", "hold"]
JsonNumber = int | float | None

#: Keys of the `signals` object of `GET /api/scale`, in order.
SIGNAL_KEYS: tuple[str, ...] = (
    "p95_latency_ms", "queue_depth", "gpu_util", "cpu_util", "rps", "capacity_rps"
)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


@dataclass(frozen=True, slots=True)
class Signals:
    """What a pool looks like now. None = no data (unknown).

    p95_latency_ms: over the gateway's recent window; queue_depth: calls waiting for the pool (total);
    gpu_util, cpu_util: pool averages as fractions 0..1; rps: completed calls per second over the
    window; capacity_rps: the pool's summed configured capacity (rps_ratio = rps / capacity_rps).
    `configured`: the METRICS names whose source exists. Leave out gpu_util/cpu_util when no replica
    of the pool has a metrics source exporting them, rps_ratio when no capacity is configured.
    """

    p95_latency_ms: float | None = None
    queue_depth: float | None = None
    gpu_util: float | None = None
    cpu_util: float | None = None
    rps: float | None = None
    capacity_rps: float | None = None
    configured: frozenset[str] = frozenset(METRICS)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.configured) - set(METRICS))
        if unknown:
            raise ValueError(f"configured: unknown metric {unknown[0]!r} (known: {', '.join(METRICS)})")

    def metric_values(self) -> dict[str, float | None]:
        """Value per configured metric, None where unknown."""
        idle = self.rps == 0.0
        out: dict[str, float | None] = {}
        for metric in METRICS:
            if metric not in self.configured:
                continue
            if metric == "rps_ratio":
                ok = self.rps is not None and self.capacity_rps is not None and self.capacity_rps > 0
                out[metric] = self.rps / self.capacity_rps if ok else None  # type: ignore[operator]
            elif metric == "p95_latency_ms" and self.p95_latency_ms is None and idle:
                # No calls completed in the window: zero load, not missing data.
                out[metric] = 0.0
            else:
                out[metric] = getattr(self, metric)
        return out

    def to_json(self) -> dict[str, JsonNumber]:
        out: dict[str, JsonNumber] = {}
        for key in SIGNAL_KEYS:
            value: float | None = getattr(self, key)
            if value is None:
                out[key] = None
            elif key == "queue_depth" and float(value).is_integer():
                out[key] = int(value)
            else:
                out[key] = float(value)
        return out


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """One evaluation's outcome. `recommendation` is the metric-based count before stabilisation,
    rate policies and clamps (not part of the JSON contract)."""

    current_replicas: int
    desired_replicas: int
    direction: Direction
    reason: str
    signals: Mapping[str, JsonNumber]
    recommendation: int
    at: float

    def to_json(self) -> dict[str, object]:
        """The per-pool object of `GET /api/scale`."""
        return {
            "current_replicas": self.current_replicas,
            "desired_replicas": self.desired_replicas,
            "direction": self.direction,
            "reason": self.reason,
            "signals": dict(self.signals),
        }


@dataclass(slots=True)
class _History:
    recommendations: deque[Recommendation] = field(default_factory=deque)
    events: deque[ScaleEvent] = field(default_factory=deque)
    seed: Recommendation | None = None
    last_current: int | None = None
    idle_since: float | None = None


class ScaleController:
    """Decides one pool's replica count from successive `Signals` (see module docstring)."""

    def __init__(self, policy: PoolScalePolicy) -> None:
        self._policy = policy
        self._h = _History()
        self._last: ScaleDecision | None = None

    @property
    def policy(self) -> PoolScalePolicy:
        return self._policy

    @property
    def last(self) -> ScaleDecision | None:
        """The most recent decision, None before the first evaluation."""
        return self._last

    def carry_over(self, policy: PoolScalePolicy) -> ScaleController:
        """A controller for a reloaded policy that keeps this one's windows and scale events."""
        new = ScaleController(policy)
        h = self._h
        new._h = _History(
            deque(h.recommendations), deque(h.events), h.seed, h.last_current, h.idle_since
        )
        new._last = self._last
        return new

    def evaluate(self, signals: Signals, current_replicas: int, now: float) -> ScaleDecision:
        """Record this evaluation and return the replica count the pool should have."""
        if current_replicas < 0:
            raise ValueError(f"current_replicas: must not be negative, got {current_replicas}")
        self._observe_replicas(current_replicas, now)
        p = self._policy
        cur = current_replicas
        if cur == 0:
            desired, reason = self._at_zero(signals)
            return self._decide(signals, cur, desired, desired, reason, now)
        if cur > p.max_replicas:
            reason = f"current {cur} > max_replicas {p.max_replicas}"
            return self._decide(signals, cur, p.max_replicas, p.max_replicas, reason, now)
        floor = max(1, p.min_replicas)
        if cur < floor:
            reason = f"current {cur} < min_replicas {floor}"
            return self._decide(signals, cur, floor, floor, reason, now)

        values = signals.metric_values()
        raw, reason, all_low = self._recommend(values, cur)
        h = self._h
        stabilized = self._stabilize(cur, raw, now)
        h.recommendations.append(Recommendation(now, raw))
        if stabilized != raw:
            if raw > cur:
                reason += f"; held by {p.window_up_s:g}s scale-up stabilisation (lowest recent {stabilized})"
            else:
                reason += (
                    f"; held by {p.window_down_s:g}s scale-down stabilisation (highest recent {stabilized})"
                )
        desired = stabilized
        if stabilized > cur:
            limit = scale_up_limit(cur, h.events, p.up_policies, p.select_up, now)
            if desired > min(limit, p.max_replicas):
                desired = min(limit, p.max_replicas)
                if limit < p.max_replicas:
                    rules = ", ".join(r.describe() for r in p.up_policies) or "disabled"
                    reason += f"; limited to {desired} by scale-up rate {rules}"
                else:
                    reason += f"; capped at max_replicas {p.max_replicas}"
        elif stabilized < cur:
            limit = scale_down_limit(cur, h.events, p.down_policies, p.select_down, now)
            if desired < max(limit, floor):
                desired = max(limit, floor)
                if limit > floor:
                    rules = ", ".join(r.describe() for r in p.down_policies) or "disabled"
                    reason += f"; limited to {desired} by scale-down rate {rules}"
                else:
                    reason += f"; floored at min_replicas {floor}"

        idle_reason = self._idle_check(signals, all_low, now)
        if idle_reason is not None:
            desired, reason = 0, idle_reason
        return self._decide(signals, cur, desired, raw, reason, now)

    # -- steps -------------------------------------------------------------------------------

    def _observe_replicas(self, current: int, now: float) -> None:
        """Infer scale events and drop history no window or period can still see."""
        h, p = self._h, self._policy
        if h.last_current is not None and current != h.last_current:
            h.events.append(ScaleEvent(now, current - h.last_current))
        h.last_current = current
        if h.seed is None:
            h.seed = Recommendation(now, current)
        keep_recs = max(p.window_up_s, p.window_down_s)
        while h.recommendations and h.recommendations[0].at <= now - keep_recs:
            h.recommendations.popleft()
        keep_events = max((r.period_s for r in (*p.up_policies, *p.down_policies)), default=0.0)
        while h.events and h.events[0].at <= now - keep_events:
            h.events.popleft()

    def _stabilize(self, cur: int, raw: int, now: float) -> int:
        p, h = self._policy, self._h
        result = stabilize(cur, raw, h.recommendations, now, p.window_up_s, p.window_down_s)
        seed = h.seed
        if seed is not None and seed.at > now - p.window_down_s and result < cur:
            # The start-up seed takes part in the scale-down window only (see module docstring).
            result = min(cur, max(result, seed.replicas))
        return result

    def _recommend(self, values: dict[str, float | None], cur: int) -> tuple[int, str, bool]:
        """HPA proposal over known metrics, gated so that only all-low signals can scale down.

        Returns (recommendation, reason, every configured signal known and below down)."""
        p = self._policy
        proposals: dict[str, int] = {}
        for metric, value in values.items():
            if value is not None:
                proposals[metric] = metric_proposal(cur, value, p.up.get(metric), p.tolerance)
        unknown = [m for m, v in values.items() if v is None]
        above_down = [m for m, v in values.items() if v is not None and v >= p.down.get(m)]
        all_low = bool(values) and not unknown and not above_down
        if not proposals:
            why = f"{unknown[0]} unknown" if unknown else "no configured signals"
            return cur, f"{why}, holding", False
        top = max(proposals.values())
        driver = next(m for m in values if proposals.get(m) == top)
        value = values[driver]
        assert value is not None
        if top > cur:
            return top, f"{driver} {_fmt(value)} > {_fmt(p.up.get(driver))}", all_low
        if top < cur and all_low:
            return top, f"{driver} {_fmt(value)} < {_fmt(p.down.get(driver))}, all signals below down", True
        # Hold: explain what keeps the count where it is.
        within = [m for m, v in values.items() if v is not None and v > p.up.get(m)]
        if within:
            m = within[0]
            v = values[m]
            assert v is not None
            return cur, f"{m} {_fmt(v)} > {_fmt(p.up.get(m))} within tolerance {p.tolerance:g}", all_low
        if unknown:
            return cur, f"{unknown[0]} unknown, no scale-down", False
        if above_down:
            m = max(above_down, key=lambda k: (values[k] or 0.0) / max(p.down.get(k), 1e-12))
            v = values[m]
            assert v is not None
            return cur, f"{m} {_fmt(v)} >= down {_fmt(p.down.get(m))}", False
        return cur, f"all signals below down; {driver} {_fmt(value)} keeps {cur}", all_low

    def _at_zero(self, signals: Signals) -> tuple[int, str]:
        p = self._policy
        self._h.idle_since = None
        if p.scale_to_zero_after_s is None:
            return max(1, p.min_replicas), f"current 0 < min_replicas {max(1, p.min_replicas)}"
        target = max(1, p.min_replicas)
        if signals.rps is not None and signals.rps > 0:
            return target, f"rps {_fmt(signals.rps)} > 0 at zero replicas"
        if signals.queue_depth is not None and signals.queue_depth > 0:
            return target, f"queue_depth {_fmt(signals.queue_depth)} > 0 at zero replicas"
        return 0, "no traffic at zero replicas"

    def _idle_check(self, signals: Signals, all_low: bool, now: float) -> str | None:
        """Track the idle period; return a reason once the pool should go to zero."""
        p, h = self._policy, self._h
        if p.scale_to_zero_after_s is None:
            return None
        queue_idle = signals.queue_depth == 0 if "queue_depth" in signals.configured else True
        if not (signals.rps == 0 and queue_idle and all_low):
            h.idle_since = None
            return None
        if h.idle_since is None:
            h.idle_since = now
        idle_for = now - h.idle_since
        if idle_for >= p.scale_to_zero_after_s:
            return f"no traffic for {idle_for:.0f}s >= scale_to_zero_after_s {p.scale_to_zero_after_s:g}"
        return None

    def _decide(
        self, signals: Signals, cur: int, desired: int, raw: int, reason: str, now: float
    ) -> ScaleDecision:
        direction: Direction = "up" if desired > cur else "down" if desired < cur else "hold"
        decision = ScaleDecision(cur, desired, direction, reason, signals.to_json(), raw, now)
        self._last = decision
        return decision
