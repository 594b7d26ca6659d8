"""Kubernetes HorizontalPodAutoscaler (autoscaling/v2) arithmetic as pure functions.

Owns the four steps the HPA controller applies to a metric-based recommendation, transcribed from
the controller's documented algorithm and behaviour (kubernetes.io "Horizontal Pod Autoscaling",
pkg/controller/podautoscaler/horizontal.go):

1. per metric: desired = ceil(current * value / target), or current when |value/target - 1| <=
   tolerance; across metrics the largest proposal wins;
2. stabilisation: the scale-up bound is the MIN of the recommendations recorded within the scale-up
   window, the scale-down bound the MAX of those within the scale-down window; the result is current
   replicas pushed up to the first bound and down to the second;
3. rate policies: replicas at the start of a period = current - added + removed within the period;
   Percent up = ceil(start * (1 + v/100)), Pods up = start + v, Percent down = floor(start *
   (1 - v/100)), Pods down = start - v; selectPolicy Max takes the policy allowing the largest change,
   Min the smallest, Disabled forbids the direction;
4. min/max replicas clamp the rate-limited result.

Always true: nothing here holds state, reads a clock or does I/O; callers pass histories and `now`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config.autoscale import RatePolicy, SelectPolicy


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recorded unstabilised recommendation."""

    at: float
    replicas: int


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """An observed change of the replica count (positive: added, negative: removed)."""

    at: float
    change: int


def metric_proposal(current: int, value: float, target: float, tolerance: float) -> int:
    """HPA per-metric replica count: current when within tolerance, else ceil(current * ratio)."""
    ratio = value / target
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(ratio * current)


def stabilize(
    current: int,
    desired: int,
    history: Iterable[Recommendation],
    now: float,
    window_up_s: float,
    window_down_s: float,
) -> int:
    """Apply the HPA stabilisation windows to `desired` given the earlier recommendations.

    Samples strictly newer than `now - window` count, as the controller's `After(cutoff)` test does.
    """
    up_bound = desired
    down_bound = desired
    up_cutoff = now - window_up_s
    down_cutoff = now - window_down_s
    for rec in history:
        if rec.at > up_cutoff:
            up_bound = min(up_bound, rec.replicas)
        if rec.at > down_cutoff:
            down_bound = max(down_bound, rec.replicas)
    result = current
    if result < up_bound:
        result = up_bound
    if result > down_bound:
        result = down_bound
    return result


def _changes_within(period_s: float, events: Iterable[ScaleEvent], now: float) -> tuple[int, int]:
    """Replicas (added, removed) by events newer than `now - period_s`."""
    cutoff = now - period_s
    added = removed = 0
    for ev in events:
        if ev.at > cutoff:
            if ev.change > 0:
                added += ev.change
            else:
                removed -= ev.change
    return added, removed


def scale_up_limit(
    current: int,
    events: Iterable[ScaleEvent],
    policies: Iterable[RatePolicy],
    select: SelectPolicy,
    now: float,
) -> int:
    """The most replicas the up policies allow now (never below `current`)."""
    if select == "disabled":
        return current
    evs = list(events)
    proposals: list[int] = []
    for rule in policies:
        added, removed = _changes_within(rule.period_s, evs, now)
        start = current - added + removed
        if rule.kind == "pods":
            proposals.append(start + int(rule.value))
        else:
            # Rounded up so that a small pool can always grow by at least one replica.
            proposals.append(math.ceil(start * (1.0 + rule.value / 100.0)))
    if not proposals:
        return current
    limit = max(proposals) if select == "max" else min(proposals)
    return max(limit, current)


def scale_down_limit(
    current: int,
    events: Iterable[ScaleEvent],
    policies: Iterable[RatePolicy],
    select: SelectPolicy,
    now: float,
) -> int:
    """The fewest replicas the down policies allow now (never above `current`)."""
    if select == "disabled":
        return current
    evs = list(events)
    proposals: list[int] = []
    for rule in policies:
        added, removed = _changes_within(rule.period_s, evs, now)
        start = current - added + removed
        if rule.kind == "pods":
            proposals.append(start - int(rule.value))
        else:
            # Truncated toward zero like the controller's int32 conversion.
            proposals.append(int(start * (1.0 - rule.value / 100.0)))
    if not proposals:
        return current
    # "max" selects the policy allowing the largest change, which for scaling down is the lowest count.
    limit = min(proposals) if select == "max" else max(proposals)
    return min(limit, current)
