"""Peak EWMA with a fake clock, and the cost functions balancers rank by."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from policies.load import (
    GPU_EXCESS,
    GPU_NEUTRAL,
    LATENCY_BAND,
    NO_DATA_PENALTY,
    QUEUE_OFFSET,
    PeakEwma,
    gpu_cost,
    in_flight_cost,
    least_loaded_cost,
    least_loaded_costs,
    peak_ewma_cost,
)


@dataclass(frozen=True)
class View:
    """A fixed ReplicaView; frozen, so a cost function that tried to mutate it would raise."""

    name: str = "r"
    weight: float = 1.0
    in_flight: int = 0
    latency: float = 0.01
    gpu_util: float | None = None
    gpu_mem_frac: float | None = None
    pool: str = "default"

    def latency_s(self, now: float) -> float:
        return self.latency


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


# --- PeakEwma -------------------------------------------------------------------------------------


def test_no_data_reads_default() -> None:
    assert PeakEwma().value(5.0) == 0.0
    assert not PeakEwma().observed
    assert PeakEwma(default_s=0.03).value(5.0) == 0.03


def test_first_observation_is_the_estimate() -> None:
    clock = FakeClock()
    ewma = PeakEwma(tau_s=10.0)
    ewma.observe(0.020, clock.now)
    assert ewma.observed
    assert ewma.value(clock.now) == pytest.approx(0.020)


def test_a_peak_is_taken_at_once() -> None:
    clock = FakeClock()
    ewma = PeakEwma(tau_s=10.0)
    ewma.observe(0.010, clock.now)
    ewma.observe(0.500, clock.advance(0.001))
    assert ewma.value(clock.now) == pytest.approx(0.500)


def test_a_lower_observation_is_blended_by_elapsed_time() -> None:
    clock = FakeClock()
    ewma = PeakEwma(tau_s=10.0)
    ewma.observe(0.100, clock.now)
    ewma.observe(0.010, clock.advance(10.0))  # one tau later: weight of the old estimate is e^-1
    expected = 0.100 * math.exp(-1) + 0.010 * (1 - math.exp(-1))
    assert ewma.value(clock.now) == pytest.approx(expected, rel=1e-12)


def test_decay_depends_on_time_not_on_the_number_of_observations() -> None:
    one_step, many_steps = PeakEwma(tau_s=10.0), PeakEwma(tau_s=10.0)
    one_step.observe(0.100, 0.0)
    many_steps.observe(0.100, 0.0)
    one_step.observe(0.010, 10.0)
    for k in range(1, 101):
        many_steps.observe(0.010, k * 0.1)
    assert many_steps.value(10.0) == pytest.approx(one_step.value(10.0), rel=1e-9)
    # A burst of observations at one instant moves nothing.
    burst = PeakEwma(tau_s=10.0)
    burst.observe(0.100, 0.0)
    for _ in range(1000):
        burst.observe(0.001, 0.0)
    assert burst.value(0.0) == pytest.approx(0.100)


def test_reading_decays_toward_zero_without_changing_state() -> None:
    clock = FakeClock()
    ewma = PeakEwma(tau_s=10.0)
    ewma.observe(0.050, clock.now)
    later = clock.now + 20.0
    assert ewma.value(later) == pytest.approx(0.050 * math.exp(-2))
    assert ewma.value(later) == ewma.value(later)  # pure read
    assert ewma.value(clock.now) == pytest.approx(0.050)
    # Never reads as exactly 0.0 ("no data") once observed, however long the silence.
    assert ewma.value(clock.now + 1e6) > 0.0


def test_time_going_backwards_neither_decays_nor_rewinds() -> None:
    ewma = PeakEwma(tau_s=10.0)
    ewma.observe(0.100, 50.0)
    ewma.observe(0.010, 49.0)  # reported late: no decay, so the blend weight of the new value is 0
    assert ewma.value(50.0) == pytest.approx(0.100)
    assert ewma.value(60.0) == pytest.approx(0.100 * math.exp(-1))


def test_a_lower_bound_above_the_estimate_raises_it_at_once() -> None:
    """A call cancelled after 0.4 s (a hedge's losing copy): the replica takes at least that."""
    ewma = PeakEwma(tau_s=10.0)
    ewma.observe(0.010, 0.0)
    ewma.at_least(0.400, 0.5)
    assert ewma.value(0.5) == pytest.approx(0.400)


def test_a_lower_bound_below_the_estimate_changes_nothing() -> None:
    ewma, same = PeakEwma(tau_s=10.0), PeakEwma(tau_s=10.0)
    for e in (ewma, same):
        e.observe(0.100, 0.0)
    ewma.at_least(0.005, 1.0)  # not blended in: a bound says nothing about how fast it is
    assert ewma.value(1.0) == same.value(1.0)
    assert ewma.value(30.0) == same.value(30.0)


def test_a_lower_bound_is_the_first_estimate_of_an_unmeasured_replica() -> None:
    ewma = PeakEwma(tau_s=10.0)
    ewma.at_least(0.250, 3.0)
    assert ewma.observed and ewma.value(3.0) == pytest.approx(0.250)
    with pytest.raises(ValueError):
        ewma.at_least(math.nan, 4.0)


@pytest.mark.parametrize("rtt", [-0.001, math.nan, math.inf])
def test_invalid_observations_raise(rtt: float) -> None:
    with pytest.raises(ValueError):
        PeakEwma().observe(rtt, 0.0)


@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan, math.inf])
def test_invalid_tau_raises(tau: float) -> None:
    with pytest.raises(ValueError):
        PeakEwma(tau_s=tau)


# --- cost functions -------------------------------------------------------------------------------


def test_in_flight_cost_orders_by_queue_per_weight() -> None:
    assert in_flight_cost(View(in_flight=0), 0.0) < in_flight_cost(View(in_flight=1), 0.0)
    assert in_flight_cost(View(in_flight=3, weight=4.0), 0.0) < in_flight_cost(View(in_flight=1), 0.0)
    # Idle replicas compare by weight instead of tying.
    assert in_flight_cost(View(weight=2.0), 0.0) < in_flight_cost(View(weight=1.0), 0.0)


def test_peak_ewma_cost_is_pending_plus_one_times_latency() -> None:
    assert peak_ewma_cost(View(in_flight=3, latency=0.02), 0.0) == pytest.approx(0.08)
    assert peak_ewma_cost(View(in_flight=0, latency=0.02), 0.0) == pytest.approx(0.02)


def test_unmeasured_replica_gets_one_probe_at_a_time() -> None:
    # Finagle's rule: free while idle, penalised once it has a call out and no answer yet.
    assert peak_ewma_cost(View(in_flight=0, latency=0.0), 0.0) == 0.0
    assert peak_ewma_cost(View(in_flight=1, latency=0.0), 0.0) == NO_DATA_PENALTY + 1
    busy_measured = View(in_flight=500, latency=0.5)
    assert peak_ewma_cost(View(in_flight=1, latency=0.0), 0.0) > peak_ewma_cost(busy_measured, 0.0)


def test_gpu_cost_grows_with_utilisation_and_memory() -> None:
    utils = [0.0, 0.1, 0.5, 0.8, 0.9, 0.95, 1.0]
    costs = [gpu_cost(View(gpu_util=u, gpu_mem_frac=0.2), 0.0) for u in utils]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    mems = [0.0, 0.5, 0.9, 0.99]
    mem_costs = [gpu_cost(View(gpu_util=0.3, gpu_mem_frac=m), 0.0) for m in mems]
    assert mem_costs == sorted(mem_costs) and len(set(mem_costs)) == len(mem_costs)
    assert all(math.isfinite(c) and c >= 1.0 for c in costs + mem_costs)
    # Saturated vs lightly used: the factor that lets P2C starve the saturated one.
    assert gpu_cost(View(gpu_util=0.9), 0.0) / gpu_cost(View(gpu_util=0.1), 0.0) > 8.0


def test_unknown_gpu_is_neutral_never_idle() -> None:
    unknown = gpu_cost(View(gpu_util=None, gpu_mem_frac=None), 0.0)
    idle = gpu_cost(View(gpu_util=0.0, gpu_mem_frac=0.0), 0.0)
    saturated = gpu_cost(View(gpu_util=0.95, gpu_mem_frac=0.95), 0.0)
    assert idle < unknown < saturated
    assert unknown == gpu_cost(View(gpu_util=GPU_NEUTRAL, gpu_mem_frac=GPU_NEUTRAL), 0.0)
    # Each field on its own, too.
    all_idle = gpu_cost(View(gpu_util=0.0, gpu_mem_frac=0.0), 0.0)
    assert gpu_cost(View(gpu_util=None, gpu_mem_frac=0.0), 0.0) > all_idle
    assert gpu_cost(View(gpu_util=0.0, gpu_mem_frac=None), 0.0) > all_idle


def test_out_of_range_gpu_readings_are_clamped() -> None:
    assert gpu_cost(View(gpu_util=-0.5), 0.0) == gpu_cost(View(gpu_util=0.0), 0.0)
    assert math.isfinite(gpu_cost(View(gpu_util=1.7, gpu_mem_frac=3.0), 0.0))


def test_least_loaded_cost_is_the_documented_product() -> None:
    v = View(in_flight=2, latency=0.03, gpu_util=0.6, gpu_mem_frac=0.4, weight=2.0)
    assert least_loaded_cost(v, 0.0) == pytest.approx(peak_ewma_cost(v, 0.0) * gpu_cost(v, 0.0) / 2.0)


def test_least_loaded_cost_penalises_latency_and_saturation() -> None:
    fast = View(latency=0.001, gpu_util=0.5)
    slow = View(latency=0.051, gpu_util=0.5)
    assert least_loaded_cost(slow, 0.0) / least_loaded_cost(fast, 0.0) == pytest.approx(51.0)
    cool = View(gpu_util=0.1)
    hot = View(gpu_util=0.9)
    assert least_loaded_cost(hot, 0.0) > 8 * least_loaded_cost(cool, 0.0)
    # Weight is capacity: twice the weight, half the cost.
    assert least_loaded_cost(View(weight=2.0), 0.0) == pytest.approx(least_loaded_cost(View(), 0.0) / 2)


def test_least_loaded_costs_of_one_candidate_is_its_own_cost() -> None:
    v = View(in_flight=3, latency=0.02, gpu_util=0.7, gpu_mem_frac=0.4, weight=2.0)
    assert least_loaded_costs([v], 0.0) == [least_loaded_cost(v, 0.0)]
    assert least_loaded_costs([], 0.0) == []


def test_least_loaded_costs_is_the_documented_formula() -> None:
    a = View("a", in_flight=1, latency=0.010, gpu_util=0.2, gpu_mem_frac=None)
    b = View("b", in_flight=5, latency=0.030, gpu_util=0.6, gpu_mem_frac=0.5, weight=2.0)
    c = View("c", in_flight=0, latency=0.011, gpu_util=None, gpu_mem_frac=None)
    offset = 1 + QUEUE_OFFSET * 6 / 3
    mean_u = (0.2 + 0.6 + GPU_NEUTRAL) / 3
    ub = mean_u + GPU_EXCESS * (0.6 - mean_u)  # above the mean: half the excess
    uc = mean_u + GPU_EXCESS * (GPU_NEUTRAL - mean_u)
    mem_b = 1.0 + 0.1 * 0.5 / 0.5
    mem_neutral = 1.0 + 0.1 * GPU_NEUTRAL / (1.0 - GPU_NEUTRAL)
    band = LATENCY_BAND * 0.010  # c's 0.011 is within the band of the fastest (a)
    assert least_loaded_costs([a, b, c], 0.0) == pytest.approx([
        (1 + offset) * band * mem_neutral / (1 - mean_u),  # below the mean: the mean
        (5 + offset) * 0.030 * mem_b / (1 - ub) / 2.0,
        (0 + offset) * band * mem_neutral / (1 - uc)])


def test_a_latency_ratio_outweighs_the_usual_queue() -> None:
    # Healthy replicas holding their usual 4 calls against a 4x slower one holding none: Finagle's
    # (n + 1) * latency prefers the slow one (0.040 < 0.050); measured against the mean queue the
    # healthy ones stay cheaper. A replica only 1.5x slower and idle still takes the next call.
    fast = [View(f"f{i}", in_flight=4, latency=0.010) for i in range(3)]
    slow = View("slow", in_flight=0, latency=0.040)
    assert peak_ewma_cost(slow, 0.0) < peak_ewma_cost(fast[0], 0.0)
    costs = least_loaded_costs([*fast, slow], 0.0)
    assert max(costs[:3]) < costs[3]
    costs = least_loaded_costs([*fast, View("mild", in_flight=0, latency=0.015)], 0.0)
    assert min(costs[:3]) > costs[3]


def test_equal_latencies_order_by_calls_in_flight() -> None:
    views = [View(f"r{i}", in_flight=n) for i, n in enumerate([3, 0, 7, 1])]
    costs = least_loaded_costs(views, 0.0)
    assert sorted(range(4), key=costs.__getitem__) == [1, 3, 0, 2]


def test_stale_gpu_differences_tilt_less_and_saturation_still_shows() -> None:
    cool, warm = View("c", gpu_util=0.4, gpu_mem_frac=None), View("w", gpu_util=0.6, gpu_mem_frac=None)
    c, w = least_loaded_costs([cool, warm], 0.0)
    full = gpu_cost(warm, 0.0) / gpu_cost(cool, 0.0)  # 1.5x at full strength
    assert 1.0 < w / c < 1.0 + (full - 1.0) * 0.5
    hot = View("h", gpu_util=0.95, gpu_mem_frac=None)
    costs = least_loaded_costs([hot] + [View(f"i{i}", gpu_util=0.1, gpu_mem_frac=None)
                                        for i in range(3)], 0.0)
    assert costs[0] > 1.8 * costs[1]


def test_unknown_gpu_counts_as_neutral_among_candidates() -> None:
    known = View("k", gpu_util=GPU_NEUTRAL, gpu_mem_frac=None)
    unknown = View("u", gpu_util=None, gpu_mem_frac=None)
    a, b = least_loaded_costs([known, unknown], 0.0)
    assert a == pytest.approx(b)


def test_unmeasured_candidate_is_probed_one_call_at_a_time_among_peers() -> None:
    peer = View("p", in_flight=2, latency=0.010)
    costs = least_loaded_costs([peer, View("n", in_flight=0, latency=0.0)], 0.0)
    assert costs[1] == 0.0
    costs = least_loaded_costs([peer, View("n", in_flight=1, latency=0.0)], 0.0)
    assert costs[1] == NO_DATA_PENALTY + 1


def test_least_loaded_costs_never_mutate_views() -> None:
    views = [View("a", in_flight=2, gpu_util=0.3), View("b", in_flight=1, gpu_util=None)]
    least_loaded_costs(views, 0.0)  # frozen dataclasses: a write would raise


def test_latencies_within_the_band_of_the_fastest_count_as_equal() -> None:
    # Peak EWMA keeps every jitter spike: 10 % apart is noise, and the queue decides.
    views = [View("a", in_flight=3, latency=0.010), View("b", in_flight=1, latency=0.011)]
    a, b = least_loaded_costs(views, 0.0)
    assert b < a
    views = [View("a", in_flight=3, latency=0.010), View("b", in_flight=1, latency=0.030)]
    a, b = least_loaded_costs(views, 0.0)
    assert a < b
