"""The canary rollout controller under a fake clock and seeded traffic: a healthy canary walks
every step and is promoted; an erroring, a slow and a disagreeing canary are rolled back within
their first step; a tail-only regression is caught at the end of the step; operator actions."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from gateway.config import Rollout
from gateway.rollout.controller import RolloutController, RolloutError, Transition

Latency = Callable[[random.Random], float]


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def base_latency(rng: random.Random) -> float:
    return 0.010 * rng.lognormvariate(0, 0.2)


def slow_latency(rng: random.Random) -> float:
    return base_latency(rng) + 0.100


def tail_latency(rng: random.Random) -> float:
    return 0.040 if rng.random() < 0.10 else base_latency(rng)


CFG = Rollout(canary="canary", steps=[5, 25, 50, 100], step_s=60, min_requests=100)


def make(cfg: Rollout = CFG) -> tuple[RolloutController, FakeClock]:
    clock = FakeClock()
    return RolloutController("m", cfg, clock, stable_version=1, canary_version=2), clock


def drive(ctl: RolloutController, clock: FakeClock, seconds: float, rps: int = 50, *,
          canary_error: float = 0.0, canary_latency: Latency = base_latency,
          disagree: float = 0.0, mirror: float = 0.2, seed: int = 7) -> list[Transition]:
    """Simulated traffic split by the controller's current weight, evaluated every 100 ms."""
    rng = random.Random(seed)
    out: list[Transition] = []
    for _ in range(int(seconds * 10)):
        clock.t += 0.1
        for _ in range(rps // 10):
            canary = rng.random() * 100 < ctl.canary_weight()
            if canary:
                ok = rng.random() >= canary_error
                t = ctl.observe("canary", ok, canary_latency(rng))
            else:
                t = ctl.observe("stable", True, base_latency(rng))
            if t:
                out.append(t)
            if rng.random() < mirror:
                t = ctl.observe_agreement(rng.random() >= disagree)
                if t:
                    out.append(t)
        t = ctl.evaluate()
        if t:
            out.append(t)
        if ctl.state in ("promoted", "rolled_back"):
            break
    return out


def test_healthy_canary_walks_every_step_and_is_promoted() -> None:
    ctl, clock = make()
    assert ctl.canary_weight() == 5 and ctl.weights() == {"stable": 95.0, "canary": 5.0}
    seen = drive(ctl, clock, 400)
    assert [t.kind for t in seen] == ["step", "step", "step", "promoted"]
    assert [t.weight for t in seen] == [25, 50, 100, 100]
    assert ctl.state == "promoted" and ctl.canary_weight() == 100
    assert ctl.promote_to() == 2 and ctl.label_overrides() == {"stable": 2}
    # Each step lasted at least step_s: 4 steps of 60 s.
    assert clock.t - ctl.started_at >= 4 * 60
    doc = ctl.to_json()
    assert doc["state"] == "promoted" and doc["step"] == 4 and doc["weight"] == 100
    assert [h["kind"] for h in doc["history"]] == ["step", "step", "step", "promoted"]


def test_promotion_at_full_weight_judges_latency_against_the_last_stable_baseline() -> None:
    ctl, clock = make(Rollout(canary="canary", steps=[50, 100], step_s=30, min_requests=50))
    drive(ctl, clock, 31)
    assert ctl.step == 1 and ctl.canary_weight() == 100
    drive(ctl, clock, 31, canary_latency=slow_latency)  # the stable arm gets no calls now
    assert ctl.state == "rolled_back" and "p95_ratio" in ctl.reason


def test_erroring_canary_is_rolled_back_within_its_first_step() -> None:
    ctl, clock = make()
    seen = drive(ctl, clock, 120, canary_error=0.20)
    assert [t.kind for t in seen] == ["rolled_back"]
    assert seen[0].step == 1 and seen[0].weight == 0
    assert clock.t - ctl.started_at < CFG.step_s  # did not wait for the step to end
    assert ctl.canary_weight() == 0 and ctl.weights() == {"stable": 100.0, "canary": 0.0}
    assert "error_rate" in ctl.reason and ctl.promote_to() is None
    assert ctl.to_json()["state"] == "rolled_back"


def test_slow_canary_is_rolled_back_within_its_first_step() -> None:
    ctl, clock = make()
    seen = drive(ctl, clock, 120, canary_latency=slow_latency)
    assert [t.kind for t in seen] == ["rolled_back"]
    assert clock.t - ctl.started_at < CFG.step_s
    assert "p95_ratio" in ctl.reason


def test_disagreeing_canary_is_rolled_back_within_its_first_step() -> None:
    ctl, clock = make()
    seen = drive(ctl, clock, 120, disagree=0.10)
    assert [t.kind for t in seen] == ["rolled_back"]
    assert clock.t - ctl.started_at < CFG.step_s
    assert "agreement" in ctl.reason


def test_tail_only_regression_is_caught_when_the_step_ends() -> None:
    ctl, clock = make()
    seen = drive(ctl, clock, 120, canary_latency=tail_latency)
    assert [t.kind for t in seen] == ["rolled_back"]
    assert clock.t - ctl.started_at >= CFG.step_s  # the median looked fine; the p95 did not
    assert "p95_ratio" in ctl.reason


def test_one_early_error_is_not_enough_to_roll_back() -> None:
    ctl, clock = make()
    for i in range(25):
        assert ctl.observe("canary", i != 3, 0.01) is None
    assert ctl.state == "progressing"
    for _ in range(3):
        ctl.observe("canary", False, 0.01)
    assert ctl.state == "rolled_back"


def test_a_step_lasts_until_the_canary_has_seen_min_requests() -> None:
    ctl, clock = make()
    drive(ctl, clock, 200, rps=10)  # 5% of 10 rps: 0.5 canary calls a second
    assert ctl.state == "progressing" and ctl.step == 0
    checks = ctl.to_json()["checks"]
    assert checks["requests"]["ok"] is False and checks["requests"]["limit"] == 100
    assert checks["error_rate"]["ok"] is True and checks["error_rate"]["value"] == 0
    drive(ctl, clock, 200, rps=10, seed=8)
    assert ctl.step >= 1
    assert ctl.history[0]["at"] - ctl.started_at > 200  # not at step_s = 60


def test_unconfigured_arms_are_ignored() -> None:
    ctl, _ = make()
    assert ctl.observe("pool:cpu", False, 1.0) is None
    assert ctl.stats.canary.calls == 0 and ctl.stats.stable.calls == 0


def test_pause_holds_the_weight_and_resume_restarts_the_step() -> None:
    ctl, clock = make()
    t = ctl.pause()
    assert t.kind == "paused" and ctl.state == "paused" and ctl.canary_weight() == 5
    drive(ctl, clock, 200)
    assert ctl.state == "paused" and ctl.step == 0
    with pytest.raises(RolloutError):
        ctl.pause()
    ctl.resume()
    assert ctl.state == "progressing" and ctl.step_started_at == clock.t
    drive(ctl, clock, 61)
    assert ctl.step == 1


def test_a_paused_canary_that_fails_is_still_rolled_back() -> None:
    ctl, clock = make()
    ctl.pause()
    drive(ctl, clock, 120, canary_error=0.5)
    assert ctl.state == "rolled_back"


def test_abort_promote_and_retry() -> None:
    ctl, clock = make()
    drive(ctl, clock, 61)
    assert ctl.step == 1
    t = ctl.abort("bad feeling")
    assert t.kind == "rolled_back" and t.step == 2 and ctl.canary_weight() == 0
    assert "bad feeling" in ctl.reason
    with pytest.raises(RolloutError):
        ctl.abort()
    ctl.resume()
    assert ctl.state == "progressing" and ctl.step == 0 and ctl.canary_weight() == 5
    t = ctl.promote()
    assert t.kind == "promoted" and ctl.canary_weight() == 100 and ctl.label_overrides() == {"stable": 2}
    with pytest.raises(RolloutError):
        ctl.promote()
    with pytest.raises(RolloutError):
        ctl.resume()
    assert ctl.rev == 4


def test_promote_to_for_version_and_pool_arms() -> None:
    clock = FakeClock()
    v = RolloutController("m", Rollout(canary="version:7"), clock, stable_version=1)
    v.promote()
    assert v.promote_to() == 7 and v.label_overrides() == {"stable": 7}
    p = RolloutController("m", Rollout(canary="pool:gpu2"), clock, stable_version=1)
    p.promote()
    assert p.promote_to() == "pool:gpu2" and p.label_overrides() == {}


def test_to_json_has_the_fixed_shape() -> None:
    ctl, clock = make()
    drive(ctl, clock, 10)
    doc = ctl.to_json()
    assert {"state", "step", "weight", "reason", "checks"} <= doc.keys()
    assert doc["state"] == "progressing" and doc["step"] == 1 and doc["weight"] == 5
    assert set(doc["checks"]) == {"error_rate", "p95_ratio", "agreement", "requests"}
    for check in doc["checks"].values():
        assert set(check) == {"value", "limit", "ok"}
    assert doc["checks"]["p95_ratio"]["limit"] == 1.2
    assert doc["checks"]["agreement"]["limit"] == 0.99
