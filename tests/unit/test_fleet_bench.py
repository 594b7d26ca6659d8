"""The pure parts of the fleet benchmark (`python -m benchmarks.fleet`): the scenario models'
service and stall times, the utilisation meter, the arrival schedule, the share-over-time
computation and the report's verdicts. No process is started and no traffic is sent."""

from __future__ import annotations

import math

import pytest

from benchmarks import fleet_report as fr
from benchmarks.fleet_scenarios import SCENARIO_KEYS, BusyMeter, build
from benchmarks.openloop import Outcome, poisson_schedule


def test_equal_replicas_take_the_base_time_whatever_the_load() -> None:
    sc = build("equal", 6.0)
    assert {sc.service_s(r, t, n) for r in range(4) for t in (-1.0, 0.0, 3.0) for n in (1, 9)} \
        == {0.010}


def test_slow_replica_is_four_times_slower_and_only_replica_zero() -> None:
    sc = build("slow", 6.0)
    assert sc.service_s(0, 0.0, 1) == pytest.approx(0.040)
    assert sc.service_s(1, 0.0, 1) == pytest.approx(0.010)
    assert sc.service_s(0, -0.5, 1) == pytest.approx(0.040)  # in the warm-up too


def test_replica_turns_slow_at_half_time() -> None:
    sc = build("turns-slow", 6.0)
    assert sc.service_s(0, 2.999, 1) == pytest.approx(0.010)
    assert sc.service_s(0, 3.0, 1) == pytest.approx(0.040)
    assert sc.service_s(3, 5.0, 1) == pytest.approx(0.010)


def test_load_dependent_service_time_grows_with_own_calls_in_flight() -> None:
    sc = build("load", 6.0)
    times = [sc.service_s(1, 0.0, n) for n in (1, 2, 5, 9)]
    assert times[0] == pytest.approx(0.010)
    assert times[2] == pytest.approx(0.010 * (1 + 0.15 * 4))
    assert times == sorted(times) and len(set(times)) == 4


def test_stall_pauses_replica_zero_once_per_period() -> None:
    sc = build("stall", 6.0)  # first stall at 2.0 s, 1 s long, every 10 s
    assert sc.finish_s(0, 0.5, 0.010) == pytest.approx(0.510)  # before the stall
    assert sc.finish_s(0, 2.5, 0.010) == pytest.approx(3.010)  # starts inside: waits it out
    assert sc.finish_s(0, 1.995, 0.010) == pytest.approx(3.005)  # 5 ms before, 5 ms after
    assert sc.finish_s(0, 3.0, 0.010) == pytest.approx(3.010)  # after it
    assert sc.finish_s(0, 12.5, 0.010) == pytest.approx(13.010)  # the next period
    assert sc.finish_s(1, 2.5, 0.010) == pytest.approx(2.510)  # other replicas never stall
    assert sc.stalled(0, 2.2) and not sc.stalled(0, 3.2) and not sc.stalled(2, 2.2)


def test_stall_phase_fits_a_short_run() -> None:
    assert build("stall", 3.0).stall_first_s == pytest.approx(1.0)
    assert build("stall", 60.0).stall_first_s == pytest.approx(2.0)


def test_every_scenario_has_a_distinct_number_and_unknown_is_refused() -> None:
    assert sorted(build(k, 6.0).number for k in SCENARIO_KEYS) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="unknown scenario"):
        build("nope", 6.0)


def test_busy_meter_approaches_the_level_with_its_time_constant() -> None:
    m = BusyMeter(tau_s=1.0)
    m.set(0.0, 0.5)
    assert m.read(0.0) == 0.0
    assert m.read(1.0) == pytest.approx(0.5 * (1 - math.exp(-1)))
    assert m.read(20.0) == pytest.approx(0.5, abs=1e-6)
    m.set(20.0, 0.0)
    assert m.read(21.0) == pytest.approx(0.5 * math.exp(-1), rel=1e-6)


def test_poisson_schedule_is_seeded_bounded_and_at_the_rate() -> None:
    a = poisson_schedule(1000.0, -1.0, 5.0, seed=7)
    assert a == poisson_schedule(1000.0, -1.0, 5.0, seed=7)
    assert a != poisson_schedule(1000.0, -1.0, 5.0, seed=8)
    assert all(-1.0 <= t < 5.0 for t in a) and a == sorted(a)
    assert len(a) == pytest.approx(6000, rel=0.05)


def test_window_counts_and_shares() -> None:
    arrivals = [[-0.5, 0.1, 0.2, 2.5], [1.0, 3.9, 4.0, 5.9], [], [6.0]]
    counts = fr.window_counts(arrivals, 6.0)
    # warm-up (t < 0) and anything past the run are left out
    assert counts == [[2, 1, 0], [1, 1, 2], [0, 0, 0], [0, 0, 0]]
    share = fr.shares(counts)
    assert [round(s, 3) for s in share[0]] == [0.667, 0.5, 0.0]
    assert [sum(col) for col in zip(*share, strict=True)] == pytest.approx([1.0, 1.0, 1.0])
    assert fr.window_counts(arrivals, 5.0)[1] == [1, 1]  # a partial last window is dropped
    assert fr.shares([[0, 0], [0, 0]]) == [[0.0, 0.0], [0.0, 0.0]]


def test_max_swing_finds_herding_and_ignores_steady_shares() -> None:
    steady = [[0.25, 0.26, 0.24]] * 4
    assert fr.max_swing(steady) == pytest.approx(0.26 / 0.24)
    herding = [[0.1, 0.4, 0.1], [0.3, 0.2, 0.3], [0.3, 0.2, 0.3], [0.3, 0.2, 0.3]]
    assert fr.max_swing(herding) == pytest.approx(4.0)
    assert fr.max_swing([[0.0, 0.3]]) == pytest.approx(30.0)  # 0 counts as the 1 % floor
    assert fr.max_swing([[0.5], [0.5]]) is None  # one window: nothing to compare


def test_ejections_add_up_over_repetitions_and_stay_unknown_for_the_baselines() -> None:
    runs = [_run([10.0] * 10), _run([10.0] * 10)]
    assert fr.summarize(runs, 0.1).ejections is None
    runs[0].ejections, runs[1].ejections = 2, 3
    assert fr.summarize(runs, 0.1).ejections == 5


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert fr.percentile(values, 50) == 500.0
    assert fr.percentile(values, 99) == 990.0
    assert fr.percentile(values, 99.9) == 999.0
    assert fr.percentile([], 99) is None


def _run(latencies_ms: list[float], errors: int = 0, arrivals: list[list[float]] | None = None
         ) -> fr.Run:
    outs = [Outcome(i * 0.001, ms / 1000.0, 200) for i, ms in enumerate(latencies_ms)]
    outs += [Outcome(0.5, 2.0, 0) for _ in range(errors)]
    return fr.Run(outs, arrivals or [[0.1, 2.1], [0.2, 2.2], [0.3, 2.3], [0.4, 2.4]], 4.0)


def test_summarize_pools_repetitions_and_counts_goodput_within_the_slo() -> None:
    cell = fr.summarize([_run([10.0] * 98 + [150.0, 20.0]), _run([10.0] * 100, errors=1)],
                        slo_s=0.100)
    assert cell.calls == 201 and cell.errors == 1
    assert cell.goodput == pytest.approx(199 / 8.0)  # the 150 ms answer and the error miss
    assert cell.p50_ms == pytest.approx(10.0)
    assert cell.p999_ms == pytest.approx(2000.0)
    assert cell.shares[0] == pytest.approx([0.25, 0.25])
    assert cell.swing == pytest.approx(1.0)


def _cell(p99: float, errors: int = 0, swing: float = 1.0) -> fr.Cell:
    return fr.Cell(calls=1000, errors=errors, goodput=100.0, p50_ms=10.0, p99_ms=p99,
                   p999_ms=p99, shares=[[0.25, 0.25]] * 4, swing=swing)


NUMBERS = {k: build(k, 6.0).number for k in SCENARIO_KEYS}


def _verdicts(results: dict[str, dict[str, fr.Cell]]) -> dict[str, bool | None]:
    """Target -> verdict (None: not judged)."""
    return {v.target: v.ok for v in fr.verdicts(results, NUMBERS)}


def test_verdict_on_a_bad_replica_compares_the_best_of_each_side() -> None:
    cells = {"infergate round_robin": _cell(900.0), "infergate least_loaded": _cell(20.0),
             "nginx round_robin": _cell(2000.0, errors=50), "nginx least_conn": _cell(41.0),
             "haproxy leastconn": _cell(45.0)}
    got = _verdicts({"slow": cells})
    assert got == {"2 slow: best infergate p99 vs best nginx/HAProxy, errors": True}
    cells["infergate least_loaded"] = _cell(21.0)  # 0.51x
    assert list(_verdicts({"slow": cells}).values()) == [False]
    cells["infergate least_loaded"] = _cell(20.0, errors=1)  # more errors than nginx least_conn
    got = _verdicts({"stall": cells})
    assert got["3 stall: best infergate p99 vs best nginx/HAProxy, errors"] is False
    # The stall's p99.9 is shown for information, without a verdict.
    assert got["3 stall, for information: best infergate p99.9 vs best nginx/HAProxy"] is None


def test_verdict_on_equal_replicas_holds_every_policy_to_nginx() -> None:
    cells = {"infergate round_robin": _cell(10.4), "infergate least_request": _cell(10.6),
             "nginx round_robin": _cell(10.0), "nginx least_conn": _cell(10.2),
             "haproxy leastconn": _cell(9.0)}  # HAProxy is not the reference here
    got = _verdicts({"equal": cells})
    assert got == {"1 equal: infergate round_robin p99 vs best nginx": True,
                   "1 equal: infergate least_request p99 vs best nginx": False}


def test_verdict_on_load_dependent_replicas_checks_herding_and_least_request() -> None:
    cells = {"infergate least_request": _cell(30.0, swing=1.3),
             "infergate least_loaded": _cell(29.0, swing=2.5), "nginx round_robin": _cell(31.0)}
    got = _verdicts({"load": cells})
    assert got["4 load: infergate least_request largest share swing between 2 s windows"] is True
    assert got["4 load: infergate least_loaded largest share swing between 2 s windows"] is False
    assert got["4 load: least_loaded p99 vs least_request"] is True


def test_unmeasured_targets_say_so() -> None:
    got = fr.verdicts({"slow": {"nginx least_conn": _cell(40.0)}}, NUMBERS)
    assert [(v.measured, v.ok) for v in got] == [("not measured", None)]
    lines = fr.markdown({"slow": {"nginx least_conn": _cell(40.0)}}, {"slow": "slow"}, NUMBERS)
    assert any("| n/a |" in line for line in lines)


def test_simulation_is_seeded_and_shows_the_slow_replica_avoided() -> None:
    from benchmarks.fleet_sim import simulate

    rtts, counts = simulate("least_loaded", "slow", seed=1, duration_s=4.0)
    assert (rtts, counts) == simulate("least_loaded", "slow", seed=1, duration_s=4.0)
    assert counts[0] / sum(counts) < 0.01, counts  # 4x slower replica: least_loaded avoids it
    _, lr = simulate("least_request", "slow", seed=1, duration_s=4.0)
    assert 0.05 < lr[0] / sum(lr) < 0.15, lr  # least-connections keeps its queue level: ~10 %
