"""ScaleController and HPA arithmetic against worked examples (fake clock, no I/O)."""

from __future__ import annotations

import pytest

from gateway.scaling import METRICS, PoolScalePolicy, RatePolicy, ScaleController, Signals
from gateway.scaling.hpa import (
    Recommendation,
    ScaleEvent,
    metric_proposal,
    scale_down_limit,
    scale_up_limit,
    stabilize,
)

LOW = dict(p95_latency_ms=30.0, queue_depth=0.0, gpu_util=0.1, cpu_util=0.1, rps=10.0, capacity_rps=800.0)
MID = dict(p95_latency_ms=120.0, queue_depth=20.0, gpu_util=0.5, cpu_util=0.5, rps=300.0, capacity_rps=800.0)


def sig(base: dict[str, float], **over: float | None) -> Signals:
    values: dict[str, float | None] = {**base, **over}
    return Signals(**values)  # type: ignore[arg-type]


# -- per-metric arithmetic -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "value", "target", "expected"),
    [
        (4, 400.0, 200.0, 8),  # ratio 2.0 doubles
        (4, 100.0, 200.0, 2),  # ratio 0.5 halves
        (4, 210.0, 200.0, 4),  # ratio 1.05: within tolerance 0.1
        (4, 190.0, 200.0, 4),  # ratio 0.95: within tolerance
        (4, 230.0, 200.0, 5),  # ratio 1.15: ceil(4.6)
        (3, 0.0, 200.0, 0),  # zero load proposes zero (min_replicas clamps later)
        (10, 0.9, 0.8, 12),  # ceil(11.25)
    ],
)
def test_metric_proposal_worked_examples(current: int, value: float, target: float, expected: int) -> None:
    assert metric_proposal(current, value, target, 0.1) == expected


def test_stabilize_takes_min_for_up_and_max_for_down() -> None:
    hist = [Recommendation(0.0, 4), Recommendation(30.0, 9), Recommendation(50.0, 7)]
    # Up: the lowest recommendation of the last 60 s (t > 0) is 7.
    assert stabilize(4, 10, hist, 60.0, 60.0, 300.0) == 7
    # Within the window including t=0 the lowest is 4: no scale-up yet.
    assert stabilize(4, 10, hist, 59.0, 60.0, 300.0) == 4
    # Down: the highest recommendation within 300 s is 9.
    assert stabilize(10, 2, hist, 60.0, 60.0, 300.0) == 9
    assert stabilize(10, 2, [], 60.0, 60.0, 300.0) == 2


def test_rate_limits_worked_examples() -> None:
    pct50 = (RatePolicy("percent", 50, 60),)
    assert scale_up_limit(4, [], pct50, "max", 100.0) == 6
    assert scale_up_limit(1, [], pct50, "max", 100.0) == 2  # rounded up: always at least +1
    # Two replicas were added 30 s ago: the period started at 4, so the limit stays 6.
    assert scale_up_limit(6, [ScaleEvent(70.0, 2)], pct50, "max", 100.0) == 6
    # The event left the period (strictly older than 60 s): limit from 6.
    assert scale_up_limit(6, [ScaleEvent(40.0, 2)], pct50, "max", 100.0) == 9
    both = (RatePolicy("pods", 4, 60), RatePolicy("percent", 100, 60))
    assert scale_up_limit(10, [], both, "max", 0.0) == 20
    assert scale_up_limit(10, [], both, "min", 0.0) == 14
    assert scale_up_limit(10, [], both, "disabled", 0.0) == 10
    pct20 = (RatePolicy("percent", 20, 60),)
    assert scale_down_limit(10, [], pct20, "max", 0.0) == 8
    assert scale_down_limit(4, [], pct20, "max", 0.0) == 3  # int(3.2)
    assert scale_down_limit(8, [ScaleEvent(-10.0, -2)], pct20, "max", 0.0) == 8  # period started at 10
    down_both = (RatePolicy("pods", 1, 60), RatePolicy("percent", 50, 60))
    assert scale_down_limit(10, [], down_both, "max", 0.0) == 5
    assert scale_down_limit(10, [], down_both, "min", 0.0) == 9


# -- controller ----------------------------------------------------------------------------------


def test_first_evaluation_scales_up_and_reports_design_shape() -> None:
    c = ScaleController(PoolScalePolicy(min_replicas=2, max_replicas=20))
    d = c.evaluate(
        Signals(p95_latency_ms=250, queue_depth=3, gpu_util=0.91, cpu_util=0.4, rps=700, capacity_rps=800),
        2,
        0.0,
    )
    assert d.to_json() == {
        "current_replicas": 2,
        "desired_replicas": 3,  # ceil(2 * 250/200) = 3, within the 50 % rate limit
        "direction": "up",
        "reason": "p95_latency_ms 250 > 200",
        "signals": {
            "p95_latency_ms": 250.0,
            "queue_depth": 3,
            "gpu_util": 0.91,
            "cpu_util": 0.4,
            "rps": 700.0,
            "capacity_rps": 800.0,
        },
    }
    assert isinstance(d.to_json()["signals"]["queue_depth"], int)  # type: ignore[index]


def test_largest_metric_wins_and_names_itself() -> None:
    c = ScaleController(PoolScalePolicy(up_policies=(RatePolicy("percent", 1000, 60),)))
    d = c.evaluate(sig(MID, gpu_util=0.96, queue_depth=300.0), 4, 0.0)
    assert d.recommendation == 12  # queue 300/100 = 3.0 beats gpu 0.96/0.8 = 1.2
    assert d.desired_replicas == 12
    assert d.reason == "queue_depth 300 > 100"


def test_tolerance_holds() -> None:
    c = ScaleController(PoolScalePolicy())
    d = c.evaluate(sig(MID, p95_latency_ms=215.0), 4, 0.0)
    assert (d.direction, d.desired_replicas) == ("hold", 4)
    assert "within tolerance 0.1" in d.reason


def test_scale_up_window_needs_sustained_load() -> None:
    c = ScaleController(PoolScalePolicy())
    assert c.evaluate(sig(MID), 4, 0.0).direction == "hold"
    for t in (15.0, 30.0, 45.0):
        d = c.evaluate(sig(MID, p95_latency_ms=400.0), 4, t)
        assert d.direction == "hold", t
        assert "60s scale-up stabilisation" in d.reason
    d = c.evaluate(sig(MID, p95_latency_ms=400.0), 4, 60.0)
    # Recommendation 8, rate limited to +50 %.
    assert (d.recommendation, d.desired_replicas, d.direction) == (8, 6, "up")
    assert "limited to 6 by scale-up rate 50%/60s" in d.reason


def test_rate_limit_counts_replicas_already_added_in_the_period() -> None:
    c = ScaleController(PoolScalePolicy(window_up_s=0))
    assert c.evaluate(sig(MID, p95_latency_ms=800.0), 4, 0.0).desired_replicas == 6
    # The pool grew to 6 at t=15; the period that started at 4 allows no more until t=75.
    assert c.evaluate(sig(MID, p95_latency_ms=800.0), 6, 15.0).desired_replicas == 6
    assert c.evaluate(sig(MID, p95_latency_ms=800.0), 6, 74.9).desired_replicas == 6
    # Exactly one period later the event no longer counts (the controller's After(cutoff) test).
    assert c.evaluate(sig(MID, p95_latency_ms=800.0), 6, 75.0).desired_replicas == 9


def test_scale_down_waits_for_window_and_is_rate_limited() -> None:
    c = ScaleController(PoolScalePolicy())
    c.evaluate(sig(MID), 10, 0.0)
    for t in range(15, 300, 15):
        d = c.evaluate(sig(LOW), 10, float(t))
        assert d.direction == "hold", t
        assert "300s scale-down stabilisation" in d.reason
    d = c.evaluate(sig(LOW), 10, 300.0)
    # Recommendation ceil(10 * 30/200) = 2; at most 20 % per 60 s: int(10 * 0.8) = 8.
    assert (d.recommendation, d.desired_replicas, d.direction) == (2, 8, "down")
    # p95 (ceil(1.5) = 2) ties gpu_util (ceil(1.25) = 2); the first metric in order names the reason.
    assert d.reason.startswith("p95_latency_ms 30 < 50, all signals below down")
    assert "limited to 8 by scale-down rate 20%/60s" in d.reason
    # Replicas removed; the rate budget of the period is spent until 60 s have passed.
    assert c.evaluate(sig(LOW), 8, 315.0).desired_replicas == 8
    assert c.evaluate(sig(LOW), 8, 374.9).desired_replicas == 8
    assert c.evaluate(sig(LOW), 8, 375.0).desired_replicas == 6


def test_new_controller_waits_down_window_before_first_scale_down() -> None:
    c = ScaleController(PoolScalePolicy())
    assert c.evaluate(sig(LOW), 10, 0.0).direction == "hold"
    assert c.evaluate(sig(LOW), 10, 299.0).direction == "hold"
    assert c.evaluate(sig(LOW), 10, 300.0).direction == "down"


def test_min_and_max_clamps() -> None:
    wide = (RatePolicy("percent", 1000, 60),)
    c = ScaleController(PoolScalePolicy(min_replicas=2, max_replicas=20, up_policies=wide))
    d = c.evaluate(sig(MID, queue_depth=10_000.0), 10, 0.0)
    assert (d.desired_replicas, d.recommendation) == (20, 1000)
    assert "capped at max_replicas 20" in d.reason
    d = c.evaluate(sig(MID), 25, 1.0)
    assert (d.desired_replicas, d.direction, d.reason) == (20, "down", "current 25 > max_replicas 20")
    d = c.evaluate(sig(MID), 1, 2.0)
    assert (d.desired_replicas, d.direction, d.reason) == (2, "up", "current 1 < min_replicas 2")
    c2 = ScaleController(
        PoolScalePolicy(min_replicas=3, window_down_s=0, down_policies=(RatePolicy("percent", 90, 60),))
    )
    d = c2.evaluate(sig(LOW), 5, 0.0)
    assert d.desired_replicas == 3
    assert "floored at min_replicas 3" in d.reason


def test_zero_replicas_without_scale_to_zero_restores_minimum() -> None:
    d = ScaleController(PoolScalePolicy(min_replicas=2)).evaluate(sig(LOW, rps=0.0), 0, 0.0)
    assert (d.desired_replicas, d.direction) == (2, "up")


def test_scale_to_zero_after_idle_and_back_on_first_request() -> None:
    policy = PoolScalePolicy(min_replicas=2, scale_to_zero_after_s=600)
    c = ScaleController(policy)
    idle = sig(LOW, rps=0.0, p95_latency_ms=None)
    c.evaluate(idle, 2, 0.0)
    # A single call in between restarts the idle period.
    c.evaluate(sig(LOW, rps=0.1), 2, 300.0)
    assert c.evaluate(idle, 2, 310.0).desired_replicas == 2
    assert c.evaluate(idle, 2, 909.0).desired_replicas == 2
    d = c.evaluate(idle, 2, 910.0)
    assert (d.desired_replicas, d.direction) == (0, "down")
    assert d.reason == "no traffic for 600s >= scale_to_zero_after_s 600"
    assert d.to_json()["signals"]["p95_latency_ms"] is None  # type: ignore[index]
    d = c.evaluate(Signals(rps=0.0, queue_depth=0.0), 0, 920.0)
    assert (d.desired_replicas, d.direction, d.reason) == (0, "hold", "no traffic at zero replicas")
    d = c.evaluate(Signals(rps=0.0, queue_depth=1.0), 0, 930.0)
    assert (d.desired_replicas, d.reason) == (2, "queue_depth 1 > 0 at zero replicas")
    d = c.evaluate(Signals(rps=0.5, queue_depth=0.0), 0, 931.0)
    assert (d.desired_replicas, d.direction, d.reason) == (2, "up", "rps 0.5 > 0 at zero replicas")


def test_unknown_blocks_scale_to_zero() -> None:
    c = ScaleController(PoolScalePolicy(min_replicas=1, scale_to_zero_after_s=60))
    for t in range(0, 1200, 30):
        d = c.evaluate(sig(LOW, rps=0.0, gpu_util=None), 1, float(t))
        assert d.desired_replicas == 1


def test_unknown_never_scales_down_but_does_not_block_up() -> None:
    c = ScaleController(PoolScalePolicy())
    for t in range(0, 1800, 15):
        d = c.evaluate(sig(LOW, gpu_util=None), 10, float(t))
        assert (d.direction, d.desired_replicas) == ("hold", 10), t
    assert d.reason == "gpu_util unknown, no scale-down"
    up = ScaleController(PoolScalePolicy()).evaluate(sig(LOW, gpu_util=None, p95_latency_ms=300.0), 4, 0.0)
    assert (up.direction, up.desired_replicas) == ("up", 6)


def test_unconfigured_signal_is_left_out() -> None:
    configured = frozenset(METRICS) - {"gpu_util", "cpu_util"}
    c = ScaleController(PoolScalePolicy())
    for t in range(0, 301, 15):
        d = c.evaluate(
            Signals(**{**LOW, "gpu_util": None, "cpu_util": None}, configured=configured), 10, float(t)
        )
    assert d.direction == "down"
    assert d.to_json()["signals"]["gpu_util"] is None  # type: ignore[index]


def test_rps_ratio_needs_capacity() -> None:
    c = ScaleController(PoolScalePolicy())
    d = c.evaluate(sig(LOW, capacity_rps=None), 10, 0.0)
    assert d.reason == "rps_ratio unknown, no scale-down"
    d = ScaleController(PoolScalePolicy()).evaluate(sig(MID, rps=1000.0), 4, 0.0)
    assert d.recommendation == 7  # ceil(4 * 1.25 / 0.8)
    assert d.reason == "rps_ratio 1.25 > 0.8; limited to 6 by scale-up rate 50%/60s"


def test_no_traffic_is_zero_load_not_unknown() -> None:
    c = ScaleController(PoolScalePolicy())
    for t in range(0, 301, 15):
        d = c.evaluate(
            Signals(
                p95_latency_ms=None, queue_depth=0, gpu_util=0.0, cpu_util=0.05, rps=0.0, capacity_rps=800
            ),
            10,
            float(t),
        )
    assert d.direction == "down"
    # Without a known rps, a missing p95 is unknown and holds.
    d = ScaleController(PoolScalePolicy()).evaluate(sig(LOW, p95_latency_ms=None, rps=None), 10, 0.0)
    assert d.reason == "p95_latency_ms unknown, no scale-down"


def test_no_configured_signals_holds() -> None:
    d = ScaleController(PoolScalePolicy()).evaluate(Signals(configured=frozenset()), 3, 0.0)
    assert (d.direction, d.reason) == ("hold", "no configured signals, holding")


def test_mid_band_holds_and_names_the_blocking_signal() -> None:
    c = ScaleController(PoolScalePolicy())
    d = c.evaluate(sig(LOW, p95_latency_ms=120.0), 6, 0.0)
    assert (d.direction, d.reason) == ("hold", "p95_latency_ms 120 >= down 50")


@pytest.mark.parametrize("period", [10.0, 15.0, 30.0])
def test_flapping_load_around_up_threshold_does_not_flap(period: float) -> None:
    c = ScaleController(PoolScalePolicy())
    c.evaluate(sig(MID), 4, 0.0)
    decisions = []
    t = 0.0
    high = False
    while t < 1800.0:
        t += 5.0
        if t % (2 * period) < period:
            high = True
        else:
            high = False
        d = c.evaluate(sig(MID, p95_latency_ms=260.0 if high else 150.0), 4, t)
        decisions.append(d.desired_replicas)
    assert set(decisions) == {4}


def test_flapping_load_around_down_threshold_does_not_flap() -> None:
    c = ScaleController(PoolScalePolicy())
    desired = []
    for i in range(400):
        t = i * 5.0
        # Dips below the down threshold for 4 min 55 s, then one sample above it.
        p95 = 60.0 if i % 60 == 0 else 40.0
        desired.append(c.evaluate(sig(LOW, p95_latency_ms=p95), 8, t).desired_replicas)
    assert set(desired) == {8}


def test_carry_over_keeps_windows() -> None:
    c = ScaleController(PoolScalePolicy())
    c.evaluate(sig(MID), 4, 0.0)
    c2 = c.carry_over(PoolScalePolicy(max_replicas=30))
    assert c2.policy.max_replicas == 30
    assert c2.evaluate(sig(MID, p95_latency_ms=400.0), 4, 30.0).direction == "hold"  # t=0 still in window
    fresh = ScaleController(PoolScalePolicy(max_replicas=30))
    assert fresh.evaluate(sig(MID, p95_latency_ms=400.0), 4, 30.0).direction == "up"


def test_scale_down_disabled_holds() -> None:
    c = ScaleController(PoolScalePolicy(window_down_s=0, select_down="disabled", down_policies=()))
    assert c.evaluate(sig(LOW), 10, 0.0).desired_replicas == 10


def test_rejects_negative_current_and_unknown_configured_names() -> None:
    with pytest.raises(ValueError, match="current_replicas"):
        ScaleController(PoolScalePolicy()).evaluate(sig(LOW), -1, 0.0)
    with pytest.raises(ValueError, match="configured: unknown metric 'rps'"):
        Signals(configured=frozenset({"rps"}))
