"""Peak EWMA with a fake clock, and the cost functions balancers rank by."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from policies.load import (
    GPU_NEUTRAL,
    NO_DATA_PENALTY,
    PeakEwma,
    gpu_cost,
    in_flight_cost,
    least_loaded_cost,
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
