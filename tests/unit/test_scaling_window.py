"""SignalWindow: p95 and rps over a sliding window, driven by a fake clock."""

from __future__ import annotations

import math
import random

import pytest

from gateway.scaling import SignalWindow


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_empty_window_is_zero_load() -> None:
    w = SignalWindow(60)
    assert w.rps(100.0) == 0.0
    assert w.count(100.0) == 0
    assert w.p95_ms(100.0) is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_within_bucket_error(seed: int) -> None:
    rng = random.Random(seed)
    w = SignalWindow(60)
    values = []
    for i in range(5000):
        v = rng.lognormvariate(3.0, 1.0)  # a long-tailed latency distribution around 20 ms
        values.append(v)
        w.observe(v, 1000.0 + i * 0.01)
    now = 1000.0 + 5000 * 0.01
    for q in (0.5, 0.9, 0.95, 0.99):
        got = w.quantile(q, now)
        want = exact_quantile(values, q)
        assert got is not None
        assert abs(got - want) / want <= 1 / 16, (q, got, want)


def test_old_seconds_leave_the_window() -> None:
    w = SignalWindow(10)
    for i in range(100):
        w.observe(500.0, 100.0 + i * 0.05)  # 5 s of slow calls in [100, 105)
    for i in range(100):
        w.observe(10.0, 108.0 + i * 0.01)  # 1 s of fast calls in [108, 109)
    p95 = w.p95_ms(109.0)
    assert p95 is not None and p95 > 400
    assert w.count(109.0) == 200
    # At 110.x the window covers seconds 101..110: second 100 (20 calls) is gone.
    assert w.count(110.5) == 180
    # Past 114 only the fast calls remain.
    p95 = w.p95_ms(115.0)
    assert p95 is not None and 9.0 < p95 < 11.0
    assert w.count(115.0) == 100
    assert w.rps(115.0) == 10.0
    # Everything expired: zero load, no latency.
    assert w.rps(200.0) == 0.0
    assert w.p95_ms(200.0) is None


def test_slot_reuse_after_wraparound_resets_counts() -> None:
    w = SignalWindow(5)
    w.observe(100.0, 10.2)
    w.observe(1.0, 15.3)  # same slot (15 % 5 == 10 % 5), a new second
    assert w.count(15.5) == 1
    p95 = w.p95_ms(15.5)
    assert p95 is not None and p95 < 2.0


def test_rps_divides_by_elapsed_time_until_the_window_fills() -> None:
    w = SignalWindow(60, started_at=100.0)
    for i in range(200):
        w.observe(5.0, 100.0 + i * 0.05)  # 200 calls in 10 s
    assert w.rps(110.0) == pytest.approx(20.0)
    # Half a second in: the 20 calls of second 100 over a span of at least one second.
    assert w.rps(100.5) == pytest.approx(20.0)
    assert SignalWindow(60).rps(0.0) == 0.0


def test_extreme_latencies_are_clamped_not_lost() -> None:
    w = SignalWindow(10)
    for v in (0.0, -1.0, float("nan"), 1e-9, 1e12):
        w.observe(v, 50.0)
    assert w.count(50.0) == 5
    assert w.quantile(0.2, 50.0) is not None
    top = w.quantile(1.0, 50.0)
    assert top is not None and top >= 2.0**20 * 0.9


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="window_s"):
        SignalWindow(0)
    with pytest.raises(ValueError, match="q: must be in"):
        SignalWindow(10).quantile(0.0, 0.0)
