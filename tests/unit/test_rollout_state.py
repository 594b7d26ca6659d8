"""Rollout persistence and the per-gateway manager: FileRolloutStore round trips atomically, a
second gateway (a new manager on the same file) continues at the same step, newer states are
adopted and older or foreign ones are not; reloads keep or restart rollouts; the latency
histogram and the Wilson interval."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path

import pytest

from gateway.config import ModelConfig, Rollout
from gateway.core.metrics import Metrics
from gateway.rollout.controller import RolloutController, RolloutError, Transition
from gateway.rollout.manager import RolloutManager
from gateway.rollout.stats import LatencyHistogram, wilson_interval
from gateway.rollout.store import FileRolloutStore, RedisRolloutStore, make_store


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


ROLLOUT = Rollout(canary="canary", steps=[10, 50, 100], step_s=30, min_requests=20)
MODELS = {"m": ModelConfig(labels={"stable": 1, "canary": 2}, rollout=ROLLOUT),
          "plain": ModelConfig(labels={"stable": 1})}


def feed(mgr: RolloutManager, model: str, n: int, arm: str = "canary") -> None:
    for _ in range(n):
        mgr.observe(model, arm, True, 0.01)


def test_file_store_round_trip_keeps_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gw.json"
    store = FileRolloutStore(path)
    assert store.load_sync("m") is None
    assert store.save_sync("m", {"state": "paused", "step": 2})
    data = json.loads(path.read_text())
    data["other"] = {"kept": True}
    path.write_text(json.dumps(data))
    assert store.save_sync("n", {"state": "progressing", "step": 1})
    assert store.load_sync("m") == {"state": "paused", "step": 2}
    assert json.loads(path.read_text())["other"] == {"kept": True}
    assert [p.name for p in path.parent.iterdir()] == ["gw.json"]  # no temporary file left


def test_file_store_tolerates_a_broken_file_and_an_unwritable_folder(tmp_path: Path) -> None:
    path = tmp_path / "gw.json"
    path.write_text("{not json")
    store = FileRolloutStore(path)
    assert store.load_sync("m") is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert FileRolloutStore(blocker / "gw.json").save_sync("m", {"x": 1}) is False


def test_a_second_gateway_continues_at_the_same_step(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = FileRolloutStore(tmp_path / "gw.json")
        first = RolloutManager(store, clock)
        first.configure(MODELS)
        await first.restore()
        assert first.models() == ["m"]
        feed(first, "m", 25)
        clock.t += 31
        (t,) = await first.tick()
        assert t.kind == "step" and first.weights("m") == {"stable": 50.0, "canary": 50.0}
        started = first.get("m").step_started_at  # type: ignore[union-attr]
        await first.close()

        clock.t += 5
        changes: list[Transition] = []
        second = RolloutManager(FileRolloutStore(tmp_path / "gw.json"), clock, changes.append)
        second.configure(MODELS)
        assert second.weights("m") == {"stable": 90.0, "canary": 10.0}  # before restore
        await second.restore()
        ctl = second.get("m")
        assert ctl is not None and ctl.step == 1 and ctl.step_started_at == started
        assert [c.kind for c in changes] == ["remote"]
        assert second.weights("m") == {"stable": 50.0, "canary": 50.0}
        feed(second, "m", 25)
        clock.t += 20  # 25 s into the step: not over yet
        assert await second.tick() == []
        clock.t += 6
        (t,) = await second.tick()
        assert t.kind == "step" and t.weight == 100

    asyncio.run(scenario())


def test_a_restart_before_the_first_step_keeps_the_start_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        first = RolloutManager(FileRolloutStore(tmp_path / "gw.json"), clock)
        first.configure(MODELS)
        await first.restore()
        started = clock.t
        clock.t += 20
        second = RolloutManager(FileRolloutStore(tmp_path / "gw.json"), clock)
        second.configure(MODELS)
        await second.restore()
        assert second.get("m").step_started_at == started  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_merge_remote_takes_only_newer_states_of_the_same_rollout() -> None:
    clock = FakeClock()
    a = RolloutController("m", ROLLOUT, clock, stable_version=1, canary_version=2)
    b = RolloutController("m", ROLLOUT, clock, stable_version=1, canary_version=2)
    clock.t += 1
    a.pause()
    assert b.merge_remote(a.state_dict()) is not None and b.state == "paused"
    assert b.merge_remote(a.state_dict()) is None  # not newer any more
    older = a.state_dict()
    clock.t += 1
    b.resume()
    assert b.merge_remote(older) is None and b.state == "progressing"
    other = RolloutController("m", ROLLOUT, clock, stable_version=1, canary_version=3)
    other.abort()
    assert b.merge_remote(other.state_dict()) is None and b.state == "progressing"
    assert b.merge_remote({"identity": b.identity, "rev": "x"}) is None
    assert b.merge_remote({**a.state_dict(), "rev": 99, "step": 9}) is None  # out of range


def test_reload_keeps_an_unchanged_rollout_and_restarts_a_changed_one() -> None:
    clock = FakeClock()
    mgr = RolloutManager(None, clock)
    mgr.configure(MODELS)
    ctl = mgr.get("m")
    assert ctl is not None
    ctl.pause()
    mgr.configure(MODELS)
    assert mgr.get("m") is ctl
    slower = {"m": MODELS["m"].model_copy(update={"rollout": ROLLOUT.model_copy(update={"step_s": 90})})}
    mgr.configure(slower)
    kept = mgr.get("m")
    assert kept is not ctl and kept is not None and kept.state == "paused" and kept.cfg.step_s == 90
    v3 = {"m": ModelConfig(labels={"stable": 1, "canary": 3}, rollout=ROLLOUT)}
    mgr.configure(v3)
    fresh = mgr.get("m")
    assert fresh is not None and fresh.state == "progressing" and fresh.canary_version == 3
    same = {"m": ModelConfig(labels={"stable": 3, "canary": 3}, rollout=ROLLOUT)}
    mgr.configure(same)
    assert mgr.models() == [] and mgr.to_json() == {"rollouts": {}}


def test_actions_persist_notify_and_set_the_gauge(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        metrics = Metrics()
        changes: list[Transition] = []
        store = FileRolloutStore(tmp_path / "gw.json")
        mgr = RolloutManager(store, clock, changes.append, metrics)
        mgr.configure(MODELS)
        gauge = metrics.registry.get_sample_value
        assert gauge("infergate_rollout_canary_weight", {"model": "m"}) == 10
        doc = await mgr.act("m", "pause", "looking at dashboards")
        assert doc["state"] == "paused" and doc["reason"] == "looking at dashboards"
        assert store.load_sync("m")["state"] == "paused"  # type: ignore[index]
        doc = await mgr.act("m", "abort")
        assert doc["weight"] == 0 and gauge("infergate_rollout_canary_weight", {"model": "m"}) == 0
        assert [c.kind for c in changes] == ["paused", "rolled_back"]
        with pytest.raises(RolloutError):
            await mgr.act("m", "abort")
        with pytest.raises(RolloutError):
            await mgr.act("m", "explode")
        with pytest.raises(KeyError):
            await mgr.act("plain", "pause")
        await mgr.act("m", "promote")
        assert mgr.label_overrides("m") == {"stable": 2} and mgr.label_overrides("plain") == {}
        assert mgr.weights("plain") is None
        assert set(mgr.to_json()["rollouts"]) == {"m"}

    asyncio.run(scenario())


def test_a_rollback_on_the_request_path_reaches_on_change_at_once() -> None:
    changes: list[Transition] = []
    mgr = RolloutManager(None, FakeClock(), changes.append)
    mgr.configure(MODELS)
    for _ in range(30):
        mgr.observe("m", "canary", False, 0.01)
    assert [c.kind for c in changes] == ["rolled_back"]
    assert mgr.weights("m") == {"stable": 100.0, "canary": 0.0}
    mgr.observe("unknown", "canary", False, 0.01)  # no rollout: ignored


def test_make_store() -> None:
    assert make_store("memory", None) is None
    assert isinstance(make_store("memory", "/tmp/x.json"), FileRolloutStore)
    assert isinstance(make_store("redis://127.0.0.1:1/0", "/tmp/x.json"), RedisRolloutStore)


def test_latency_histogram_quantiles_are_within_seven_percent() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(-4, 1.0) for _ in range(20000)]
    h = LatencyHistogram()
    assert h.quantile(0.95) is None
    for v in values:
        h.add(v)
    values.sort()
    for q in (0.5, 0.95, 0.99):
        exact = values[math.ceil(q * len(values)) - 1]
        got = h.quantile(q)
        assert got is not None and abs(got - exact) / exact < 0.07, (q, got, exact)
    h.add(1e9)  # capped, not an index error
    assert h.quantile(1.0) == pytest.approx(1073.0, rel=0.07)


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(4, 20)
    assert 0.07 < lo < 0.09 and 0.41 < hi < 0.43
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.83 < lo < 0.85
