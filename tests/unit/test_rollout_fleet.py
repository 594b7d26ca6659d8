"""One canary analysis for a fleet: several RolloutManagers in one process share a FileShared
folder and a FileRolloutStore (or a real redis-server), under a fake clock and seeded traffic.

Pooled statistics from uneven traffic decide exactly as one manager fed every call; a failing
canary rolls back once for the fleet; a leader that stops renewing its lease is replaced within
about three intervals and the rollout goes on; followers report what the leader reports; an
operator's action on any process applies once; an unreachable shared store means deciding alone.
With real processes on a real redis-server: the leader is SIGKILLed mid-rollout, the other two
carry it to promotion, every step decided exactly once. (That test lives here, not in
tests/integration: two test modules of one basename cannot both be collected.)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ModelConfig, Rollout
from gateway.core.shared import FileShared, RedisShared, SharedStore
from gateway.rollout.controller import RolloutError, Transition
from gateway.rollout.fleet import pool
from gateway.rollout.manager import RolloutManager
from gateway.rollout.stats import LatencyHistogram, RolloutStats
from gateway.rollout.store import FileRolloutStore, RedisRolloutStore, RolloutStore
from tests.support.procs import REPO_ROOT, ManagedProcess, RedisProc, start_redis

INTERVAL_S = 0.1  # real seconds between ticks where the lease matters (it lasts three)
ROLLOUT = Rollout(canary="canary", steps=[10, 50, 100], step_s=5, min_requests=40,
                  max_p95_ratio=2.0)
MODELS = {"m": ModelConfig(labels={"stable": 1, "canary": 2}, rollout=ROLLOUT)}
Call = tuple[int, float, bool, float]  # (gateway, arm draw in [0, 100), fails if canary, latency)


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Gateway:
    """One process's manager and the transitions it was told about."""

    def __init__(self, store: RolloutStore, shared: SharedStore | None, clock: FakeClock) -> None:
        self.changes: list[Transition] = []
        self.mgr = RolloutManager(store, clock, self.changes.append, shared=shared,
                                  interval_s=INTERVAL_S)
        self.mgr.configure(MODELS)

    @property
    def decided(self) -> list[Transition]:
        return [t for t in self.changes if t.decided]

    def weight(self) -> float:
        return (self.mgr.weights("m") or {})["canary"]

    def observe(self, call: Call) -> None:
        _, draw, fails, latency = call
        canary = draw < self.weight()
        self.mgr.observe("m", "canary" if canary else "stable", not (canary and fails), latency)

    def json(self) -> dict[str, Any]:
        return dict(self.mgr.to_json()["rollouts"]["m"])


@pytest.fixture
def redis() -> Iterator[RedisProc]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    proc = start_redis()
    yield proc  # pytest runs the rest whatever the test's outcome
    proc.stop()


async def start_fleet(n: int, tmp_path: Path, clock: FakeClock,
                      redis_url: str | None = None) -> list[Gateway]:
    """n gateways; the first to restore takes the lease."""
    folder = tmp_path / "shared"
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        gw = (Gateway(FileRolloutStore(tmp_path / "rollouts.json"),
                      FileShared(folder, instance=f"g{i}"), clock) if redis_url is None else
              Gateway(RedisRolloutStore(redis_url), RedisShared(redis_url, instance=f"g{i}"), clock))
        await gw.mgr.restore()
        out.append(gw)
    return out


async def stop_fleet(fleet: list[Gateway]) -> None:
    for gw in fleet:
        await gw.mgr.close()
        assert gw.mgr.fleet is not None
        await gw.mgr.fleet.shared.close()


def traffic(rng: random.Random, n: int, shares: list[float], error: float = 0.0) -> list[Call]:
    return [(rng.choices(range(len(shares)), shares)[0], rng.random() * 100, rng.random() < error,
             0.010 * rng.lognormvariate(0, 0.2)) for _ in range(n)]


def role(gw: Gateway) -> str:
    return str(gw.json()["fleet"]["role"])


def test_pooled_uneven_traffic_decides_as_one_gateway_fed_every_call(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        fleet = await start_fleet(3, tmp_path, clock)
        leader, followers = fleet[0], fleet[1:]
        assert [role(g) for g in fleet] == ["leader", "follower", "follower"]
        single = Gateway(FileRolloutStore(tmp_path / "single.json"), None, clock)
        await single.mgr.restore()
        rng = random.Random(11)
        for _ in range(40):
            for call in traffic(rng, 100, [0.05, 0.90, 0.05]):  # gateway g1 takes 90%
                fleet[call[0]].observe(call)
                single.observe(call)
            clock.t += 1
            # the leader pools this round's calls; the followers route the next as it decided
            for gw in followers + [leader] + followers:
                await gw.mgr.tick()
            await single.mgr.tick()
            got, want = leader.json(), single.json()
            assert (got["checks"], got["calls"]) == (want["checks"], want["calls"])
            assert [g.weight() for g in followers] == [leader.weight()] * 2
        kinds = [(t.kind, t.step, t.at) for t in single.decided]
        assert [k for k, _, _ in kinds] == ["step", "step", "promoted"]
        assert [(t.kind, t.step, t.at) for t in leader.decided] == kinds
        assert all(g.decided == [] for g in followers)  # told of the start and 3 moves:
        assert all([t.kind for t in g.changes] == ["remote"] * 4 for g in followers)
        assert all(g.mgr.label_overrides("m") == {"stable": 2} for g in fleet)
        await stop_fleet(fleet)

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["files", "redis"])
def test_a_failing_canary_rolls_back_exactly_once(tmp_path: Path, backend: str,
                                                  request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis").url if backend == "redis" else None

    async def scenario() -> None:
        clock = FakeClock()
        fleet = await start_fleet(3, tmp_path, clock, url)
        for _ in range(40):  # a follower never decides, whatever it sees on its own calls
            fleet[1].mgr.observe("m", "canary", False, 0.01)
        assert fleet[1].weight() == 10 and fleet[1].decided == []
        rng = random.Random(5)
        for _ in range(12):
            for call in traffic(rng, 150, [1, 1, 1], error=0.3):
                fleet[call[0]].observe(call)
            clock.t += 1
            await asyncio.gather(*(g.mgr.tick() for g in fleet))  # racing, as processes do
        await asyncio.gather(*(g.mgr.tick() for g in fleet))  # one quiet tick: all agree
        decided = [t for g in fleet for t in g.decided]
        assert [t.kind for t in decided] == ["rolled_back"]
        assert "error_rate" in decided[0].reason
        assert all(g.weight() == 0 and g.json()["state"] == "rolled_back" for g in fleet)
        assert all([t.kind for t in g.changes] == ["remote"] * 2 for g in fleet[1:])
        # every gateway shows the pooled evidence of the rollback
        calls = fleet[0].json()["calls"]
        assert calls["canary_errors"] > 0 and all(g.json()["calls"] == calls for g in fleet)
        await stop_fleet(fleet)

    asyncio.run(scenario())


def test_a_stopped_leader_is_replaced_and_the_rollout_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        fleet = await start_fleet(3, tmp_path, clock)
        old, survivors = fleet[0], fleet[1:]
        rng = random.Random(2)
        calls = traffic(rng, 300, [1, 1, 1])
        for call in calls:
            fleet[call[0]].observe(call)
        clock.t += 1
        for gw in fleet:
            await gw.mgr.tick()
        renewed, rounds = time.monotonic(), 0  # the old leader's last renewal was just before
        await old.mgr.close()  # stops ticking: the lease is not renewed any more
        while not any(role(g) == "leader" for g in survivors):
            rounds += 1
            assert rounds < 20, "nobody took the lease over"
            await asyncio.sleep(INTERVAL_S)
            clock.t += INTERVAL_S
            for gw in survivors:
                await gw.mgr.tick()
        took = time.monotonic() - renewed
        # not before the lease (three intervals) ran out, and within about one tick after
        assert 2 * INTERVAL_S <= took <= 3 * INTERVAL_S + 5 * INTERVAL_S, took
        (new,) = [g for g in survivors if role(g) == "leader"]
        (other,) = [g for g in survivors if g is not new]
        assert new.weight() == 10  # step 1 lasts 5 s, and the old leader's calls still count
        assert new.json()["calls"]["canary"] == sum(1 for c in calls if c[1] < 10)
        for _ in range(6):
            for call in traffic(rng, 100, [0, 1, 1]):
                fleet[call[0]].observe(call)
            clock.t += 1
            for gw in (other, new):
                await gw.mgr.tick()
        assert [(t.kind, t.step) for t in new.decided] == [("step", 2)]
        await other.mgr.tick()
        assert other.weight() == new.weight() == 50 and other.decided == []
        assert new.json()["fleet"] == {"instances": 2, "role": "leader"}
        await stop_fleet(fleet)

    asyncio.run(scenario())


def test_followers_report_what_the_leader_reports_within_one_tick(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        fleet = await start_fleet(3, tmp_path, clock)
        rng = random.Random(9)
        for call in traffic(rng, 200, [0.1, 0.6, 0.3]):
            fleet[call[0]].observe(call)
        for gw in fleet:
            gw.mgr.observe_agreement("m", True)
        clock.t += 1
        for gw in fleet:
            await gw.mgr.tick()
        assert fleet[0].json() != fleet[2].json()  # the first to tick had not seen every call
        for gw in fleet:  # one tick more, without new calls
            await gw.mgr.tick()
        views = [g.json() for g in fleet]
        for v in views:
            assert v.pop("fleet")["instances"] == 3
        assert views[1] == views[2] == views[0]
        assert views[0]["calls"]["stable"] + views[0]["calls"]["canary"] == 200
        assert views[0]["calls"]["compared"] == 3
        await stop_fleet(fleet)

    asyncio.run(scenario())


def test_an_action_on_any_gateway_applies_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        leader, a, b = await start_fleet(3, tmp_path, clock)
        clock.t += 1
        assert (await a.mgr.act("m", "pause", "by alice"))["state"] == "paused"
        await leader.mgr.tick()
        assert leader.json()["state"] == "paused" and leader.decided == []
        assert [t.kind for t in a.decided] == ["paused"]
        clock.t += 1
        results = await asyncio.gather(a.mgr.act("m", "abort", "by alice"),
                                       b.mgr.act("m", "abort", "by bob"),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], RolloutError)
        assert [t.kind for g in (leader, a, b) for t in g.decided] == ["paused", "rolled_back"]
        for gw in (leader, a, b):
            await gw.mgr.tick()
        assert len({g.json()["reason"] for g in (leader, a, b)}) == 1
        await stop_fleet([leader, a, b])

    asyncio.run(scenario())


class Unreachable(FileShared):
    """A shared store that cannot be reached: what it knows is "unknown"."""

    async def collect(self, topic: str, max_age_s: float) -> dict[str, dict[str, Any]] | None:
        return None

    async def lease(self, name: str, ttl_s: float) -> bool:
        return False


def test_an_unreachable_store_means_deciding_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        lone = RolloutManager(None, FakeClock())
        lone.configure(MODELS)
        assert lone.to_json()["rollouts"]["m"]["fleet"] == {"instances": 1, "role": "alone"}
        gw = Gateway(FileRolloutStore(tmp_path / "rollouts.json"), Unreachable(tmp_path),
                     FakeClock())
        await gw.mgr.restore()
        assert gw.json()["fleet"] == {"instances": 1, "role": "alone", "store": "unreachable"}
        for _ in range(40):  # alone, the request path rolls back at once, as a lone gateway does
            gw.mgr.observe("m", "canary", False, 0.01)
        assert [t.kind for t in gw.decided] == ["rolled_back"]
        await gw.mgr.close()

    asyncio.run(scenario())


def test_statistics_travel_and_pool_only_within_one_step() -> None:
    rng = random.Random(1)
    parts, whole = [RolloutStats(), RolloutStats()], RolloutStats()
    for i in range(500):
        arm, ok, lat = rng.choice(["stable", "canary"]), rng.random() > 0.1, rng.expovariate(50)
        parts[i % 2].observe(arm, ok, lat)
        whole.observe(arm, ok, lat)
    parts[0].observe_agreement(False)
    whole.observe_agreement(False)
    docs = [{"models": {"m": {"step": "k", "stats": p.to_json()}}} for p in parts]
    docs.append({"models": {"m": {"step": "another step", "stats": whole.to_json()}}})
    docs.append({"models": {"m": {"step": "k", "stats": {"stable": "garbage"}}}})
    pooled = pool("m", "k", docs)
    assert pooled.to_json() == whole.to_json()
    assert pooled.canary.p95() == whole.canary.p95() and pooled.agreement == whole.agreement
    with pytest.raises(ValueError):
        LatencyHistogram.from_json({"100000": 1})
    with pytest.raises(ValueError):
        RolloutStats.from_json({**whole.to_json(), "agreed": 5, "compared": 1})


# One gateway's rollout side, as the app runs it: observe on the request path (about 500 calls a
# second, healthy), tick on a timer; one JSON line per tick and per transition.
PROCESS = r"""
import asyncio, json, random, sys, time
from gateway.config import ModelConfig, Rollout
from gateway.core.shared import RedisShared
from gateway.rollout.manager import RolloutManager
from gateway.rollout.store import RedisRolloutStore
url, name, interval_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
MODELS = {"m": ModelConfig(labels={"stable": 1, "canary": 2}, rollout=Rollout(
    canary="canary", steps=[10, 50, 100], step_s=2, min_requests=20, max_p95_ratio=1.5))}
say = lambda **kw: print(json.dumps(kw), flush=True)
async def main():
    mgr = RolloutManager(RedisRolloutStore(url), shared=RedisShared(url, instance=name),
                         interval_s=interval_s, on_change=lambda t: say(
                             event="change", kind=t.kind, step=t.step, decided=t.decided))
    mgr.configure(MODELS)
    await mgr.restore()
    rng, next_tick = random.Random(name), 0.0
    while True:
        for _ in range(10):
            canary = rng.random() * 100 < mgr.weights("m")["canary"]
            mgr.observe("m", "canary" if canary else "stable", True, 0.01 * rng.lognormvariate(0, 0.2))
        if time.monotonic() >= next_tick:
            await mgr.tick()
            doc = mgr.to_json()["rollouts"]["m"]
            say(event="tick", state=doc["state"], step=doc["step"], elapsed=doc["step_elapsed_s"],
                **doc["fleet"])
            next_tick = time.monotonic() + interval_s
        await asyncio.sleep(0.02)
asyncio.run(main())
"""


def printed(proc: ManagedProcess, event: str) -> list[dict[str, Any]]:
    lines = [x for x in proc.log_text().splitlines() if x.startswith("{") and x.endswith("}")]
    return [d for d in map(json.loads, lines) if d.get("event") == event]


def last_tick(proc: ManagedProcess) -> dict[str, Any]:
    ticks = printed(proc, "tick")
    return ticks[-1] if ticks else {}


@pytest.mark.integration
def test_a_gateway_killed_mid_rollout(redis: RedisProc) -> None:
    interval = 0.2
    procs = [ManagedProcess([sys.executable, "-c", PROCESS, redis.url, f"g{i}", str(interval)],
                            name=f"rollout-fleet-g{i}", cwd=REPO_ROOT) for i in range(3)]
    try:
        def early_in_a_step_of_three() -> bool:
            ticks = [last_tick(p) for p in procs]
            return (all(t.get("instances") == 3 and t["state"] == "progressing" for t in ticks)
                    and [t["role"] for t in ticks].count("leader") == 1
                    and ticks[0]["step"] < 3 and ticks[0]["elapsed"] < 1.0)  # 2 s steps

        procs[0].wait_until(early_in_a_step_of_three, timeout=30, what="in a fleet of three")
        (leader,) = [p for p in procs if last_tick(p)["role"] == "leader"]
        survivors = [p for p in procs if p is not leader]
        os.kill(leader.pid, signal.SIGKILL)
        killed = time.monotonic()
        survivors[0].wait_until(lambda: any(last_tick(p)["role"] == "leader" for p in survivors),
                                timeout=10, what="leading after the kill")
        assert time.monotonic() - killed <= 7 * interval  # the lease lasts three intervals
        survivors[0].wait_until(
            lambda: all(last_tick(p)["state"] == "promoted" for p in survivors), timeout=30,
            what="promoted")
        assert all(last_tick(p)["instances"] == 2 and p.alive() for p in survivors)
        decided = sorted((d["kind"], d["step"]) for p in procs for d in printed(p, "change")
                         if d["decided"])
        assert decided == [("promoted", 3), ("step", 2), ("step", 3)], decided
    finally:
        for p in procs:
            p.stop()
