"""CostLedger with a fake clock: prices from the config, attribution that adds up to what the fleet
cost, idle time, the sliding window, unpriced replicas; and the gateway's feed (key labels, the
gauges)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from gateway.app.cost_feed import CostFeed, key_label, key_labels, peer_counts
from gateway.commands.scale_simulate import load_trace, simulate, trace_cost
from gateway.commands.scale_simulate import main as scale_main
from gateway.config import GatewayConfig, parse_config
from gateway.core.call import Answer, Call
from gateway.core.metrics import Metrics
from gateway.core.shared import FileShared
from gateway.scaling import PoolScalePolicy
from gateway.scaling.cost import CostLedger, CostReport, ReplicaPrice, prices

RAMP = Path(__file__).resolve().parents[2] / "deploy" / "traces" / "ramp.csv"
T0 = 6000.0  # a bucket boundary (minute 100), so figures per minute are whole
KEY_A = "tenant-a-key-0123456789"
KEY_B = "tenant-b-key-9876543210"


def config(**extra: Any) -> GatewayConfig:
    def rep(name: str, pool: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "rest": "127.0.0.1:1", "pool": pool, **kw}

    doc: dict[str, Any] = {
        "pools": {"gpu": {"cost_per_hour": 3.6}, "cpu": {"cost_per_hour": 0.36}},
        "replicas": [rep("g1", "gpu"), rep("g2", "gpu"), rep("spot", "gpu", cost_per_hour=1.2),
                     rep("c1", "cpu"), rep("x1", "edge")],
    }
    doc.update(extra)
    return parse_config(doc)


def ledger(cfg: GatewayConfig | None = None, now: float = T0, **kw: float) -> CostLedger:
    led = CostLedger(**kw)
    led.configure(prices(cfg or config()), now)
    return led


def adds_up(rep: CostReport) -> None:
    """Per pool: the models' shares plus the peers' and the idle lines are the pool's cost."""
    for name, p in rep.pools.items():
        shares = sum(m.by_pool[name].cost for m in rep.models.values() if name in m.by_pool)
        assert shares + p.peer_cost + p.idle_cost == pytest.approx(p.cost, rel=1e-9, abs=1e-12), name
    assert (sum(m.cost for m in rep.models.values())
            + sum(p.idle_cost + p.peer_cost for p in rep.pools.values())
            == pytest.approx(rep.total, rel=1e-9))


def test_prices_own_then_pool_then_none() -> None:
    got = {p.name: p.cost_per_hour for p in prices(config())}
    assert got == {"g1": 3.6, "g2": 3.6, "spot": 1.2, "c1": 0.36, "x1": None}


def test_attribution_adds_up_to_what_the_fleet_cost() -> None:
    rng = random.Random(7)
    led = ledger()
    served = {"g1": 0, "g2": 0, "spot": 0, "c1": 0}
    # 30 minutes of calls from two models; every replica but x1 (unpriced) and, in one minute,
    # c1 busy; the spot replica only in the first 10 minutes.
    for i in range(30 * 60):
        now = T0 + i + rng.random()
        for replica in ("g1", "g2", "spot", "c1"):
            if replica == "spot" and i >= 600:
                continue
            if replica == "c1" and i // 60 != 3:
                continue
            model = "resnet" if rng.random() < 0.7 else "bert"
            led.served(replica, model, now)
            served[replica] += 1
    rep = led.report(T0 + 1800)
    # What the fleet cost: every priced replica x 30 minutes x its price.
    assert rep.pools["gpu"].cost == pytest.approx((3.6 + 3.6 + 1.2) / 2, rel=1e-9)
    assert rep.pools["cpu"].cost == pytest.approx(0.36 / 2, rel=1e-9)
    assert rep.total == pytest.approx(4.38, rel=1e-9)
    adds_up(rep)
    # The spot replica is idle for 20 of its 30 minutes: its own price, not the pool's.
    assert rep.pools["gpu"].idle_cost == pytest.approx(1.2 * 20 / 60, rel=1e-9)
    # c1 served in one minute: that minute's cost went to calls, the other 29 to idle.
    assert rep.pools["cpu"].idle_cost == pytest.approx(0.36 * 29 / 60, rel=1e-9)
    calls = sum(m.calls for m in rep.models.values())
    assert calls == sum(served.values())
    assert rep.pools["gpu"].replicas == 3 and rep.pools["gpu"].cost_per_hour == pytest.approx(8.4)
    assert "edge" not in rep.pools and rep.unpriced == ["x1"]


def test_a_replicas_cost_follows_its_calls_within_a_minute() -> None:
    led = ledger()
    for i in range(3):
        led.served("spot", "resnet", T0 + 10 + i)
    led.served("spot", "bert", T0 + 20)
    rep = led.report(T0 + 60)
    minute = 1.2 / 60
    assert rep.models["resnet"].by_pool["gpu"].cost == pytest.approx(0.75 * minute)
    assert rep.models["bert"].by_pool["gpu"].cost == pytest.approx(0.25 * minute)
    assert rep.models["resnet"].by_pool["gpu"].cost_per_1k == pytest.approx(0.75 * minute / 3 * 1000)
    # g1 and g2 answered nothing: their minute is idle.
    assert rep.pools["gpu"].idle_cost == pytest.approx(2 * 3.6 / 60)
    adds_up(rep)


def test_gateways_share_a_replicas_cost_by_their_calls() -> None:
    """Three gateways send g1 calls in the same minute (1, 2 and 1 of them): each gets its
    calls' share, the fleet's cost per call is the same on each, the shares add up to g1's
    minute, and a replica only the others used is not idle here."""
    leds = [ledger(), ledger(), ledger()]
    for led, n in zip(leds, (1, 2, 1), strict=True):
        for i in range(n):
            led.served("g1", "resnet", T0 + 5 + i)
    leds[2].served("g2", "bert", T0 + 7)
    now = T0 + 60
    counts = [led.served_counts(now) for led in leds]
    assert counts[1] == {math.floor(T0 / 60): {"g1": 2}}
    reports = [led.report(now, counts[:i] + counts[i + 1:]) for i, led in enumerate(leds)]
    minute = 3.6 / 60
    for rep, n in zip(reports, (1, 2, 1), strict=True):
        assert rep.gateways == 3
        assert rep.models["resnet"].cost == pytest.approx(minute * n / 4)
        assert rep.models["resnet"].cost_per_1k == pytest.approx(minute / 4 * 1000)
        adds_up(rep)
    assert sum(r.models["resnet"].cost for r in reports) == pytest.approx(minute)
    first = reports[0].pools["gpu"]
    assert first.peer_cost == pytest.approx(minute * 3 / 4 + minute)  # g1's 3/4, all of g2's
    assert first.idle_cost == pytest.approx(1.2 / 60)  # only the spot replica was idle
    # Alone, the first gateway charged g1's whole minute to its one call.
    assert leds[0].report(now).models["resnet"].cost == pytest.approx(minute)


def test_feed_shares_counts_through_the_store(tmp_path: Path) -> None:
    """Two feeds (two gateways) on one shared folder: after a round each reports the fleet's
    cost per 1k, not four times it; a peer's malformed document is ignored."""
    cfg = config()
    clock = Clock(T0)
    feeds = [CostFeed(lambda: cfg, Metrics(), clock, FileShared(tmp_path, f"gw{i}"))
             for i in range(2)]
    for i in range(10):
        clock.t = T0 + i
        feeds[i % 2].answered("resnet", Answer(200, replica="g1"))
    (tmp_path / "cost@broken.json").write_text('{"at": 1e12, "doc": {"bucket_s": 60, "served": 7}}')
    clock.t = T0 + 60

    async def rounds() -> None:
        for _ in range(2):  # the first gateway reads the second's counts in the second round
            for f in feeds:
                await f.share()

    asyncio.run(rounds())
    for f in feeds:
        doc = f.to_json()
        assert doc["gateways"] == 2
        assert doc["models"]["resnet"]["calls"] == 5
        assert doc["models"]["resnet"]["cost_per_1k"] == pytest.approx(3.6 / 60 / 10 * 1000)


def test_peer_documents_of_another_bucket_size_or_malformed_are_refused() -> None:
    assert peer_counts({"bucket_s": 60.0, "served": {"100": {"g1": 3}}}, 60.0) == {100: {"g1": 3}}
    assert peer_counts({"bucket_s": 30.0, "served": {"100": {"g1": 3}}}, 60.0) is None
    assert peer_counts({"bucket_s": 60.0, "served": {"x": {"g1": 3}}}, 60.0) is None
    assert peer_counts({"bucket_s": 60.0, "served": {"100": ["g1"]}}, 60.0) is None


def test_idle_fleet_is_all_idle() -> None:
    led = ledger()
    rep = led.report(T0 + 600)
    assert rep.models == {}
    assert rep.pools["gpu"].idle_cost == pytest.approx(rep.pools["gpu"].cost)
    assert rep.pools["gpu"].cost == pytest.approx(8.4 / 6)
    assert rep.covered_s == 600


def test_window_expiry_and_bounded_memory() -> None:
    led = ledger(window_s=600, bucket_s=60)
    for i in range(120):
        led.served("g1", "resnet", T0 + i)
        led.busy("g1", 0.01, T0 + i)
    early = led.report(T0 + 120)
    assert early.models["resnet"].calls == 120
    assert early.pools["gpu"].busy_s == pytest.approx(1.2)
    # Hours later: only the last 9 whole minutes and the current one's 30 s are in view, and
    # none of the old calls.
    now = T0 + 5 * 3600 + 30
    later = led.report(now)
    assert "resnet" not in later.models
    assert later.pools["gpu"].cost == pytest.approx(8.4 * 570 / 3600, rel=1e-9)
    assert later.pools["gpu"].idle_cost == pytest.approx(later.pools["gpu"].cost)
    assert later.covered_s == 600
    for i in range(3 * 3600):  # a call a second for three hours
        led.served("g1", "resnet", now + i)
        led.keyed("g1", "resnet", "key-0", now + i)
    assert len(led._buckets) <= 10  # noqa: SLF001 - the bound is the point
    rep = led.report(now + 3 * 3600)
    assert rep.models["resnet"].calls == pytest.approx(600, abs=60)  # the last 9 to 10 minutes
    adds_up(rep)


def test_unpriced_replicas_are_left_out_and_named() -> None:
    led = ledger()
    for i in range(10):
        led.served("x1", "resnet", T0 + i)  # edge pool: no price
    led.served("gone", "resnet", T0 + 11)  # a replica the config does not list
    led.served("g1", "resnet", T0 + 12)
    rep = led.report(T0 + 60)
    m = rep.models["resnet"]
    assert m.unpriced_calls == 11 and m.calls == 1
    assert set(m.by_pool) == {"gpu"}
    assert m.cost == pytest.approx(3.6 / 60)  # g1's minute, not shared with unpriced calls
    assert rep.unpriced == ["x1"]
    assert rep.to_json()["unpriced"] == ["x1"]


def test_a_price_change_applies_from_then_on() -> None:
    led = ledger()
    led.served("g1", "resnet", T0 + 1)
    cheaper = config(pools={"gpu": {"cost_per_hour": 1.8}, "cpu": {"cost_per_hour": 0.36}})
    led.configure(prices(cheaper), T0 + 1800)
    rep = led.report(T0 + 3599)  # (at T0 + 3600 the first minute would leave the window)
    # g1, g2 at 3.6 then 1.8 for half an hour each; the spot replica keeps its own 1.2.
    want = 2 * (3.6 * 1800 + 1.8 * 1799) / 3600 + 1.2 * 3599 / 3600
    assert rep.pools["gpu"].cost == pytest.approx(want, rel=1e-9)
    assert rep.pools["gpu"].cost_per_hour == pytest.approx(1.8 * 2 + 1.2)
    # A replica removed stops costing; one added starts.
    led.configure([ReplicaPrice("g9", "gpu", 2.0)], T0 + 3599)
    rep2 = led.report(T0 + 3599 + 600)
    assert rep2.pools["gpu"].replicas == 1
    # The window now starts at minute 10 (T0 + 600): 50 minutes of the old fleet at 1.8 / 1.2 and
    # 3.6 before the change, then 10 minutes of g9.
    old = 2 * (3.6 * 1200 + 1.8 * 1799) / 3600 + 1.2 * 2999 / 3600
    assert rep2.pools["gpu"].cost == pytest.approx(old + 2.0 * 600 / 3600, rel=1e-9)
    assert rep2.pools["cpu"].replicas == 0  # c1 is gone: its past cost stays in the window
    assert rep2.pools["cpu"].cost > 0


def test_key_labels_split_a_models_cost() -> None:
    led = ledger()
    for i in range(30):
        led.served("g1", "resnet", T0 + i)
        led.keyed("g1", "resnet", "key-a" if i < 20 else "key-b", T0 + i)
    led.served("x1", "resnet", T0 + 40)  # unpriced: neither in the model's cost nor a key's
    led.keyed("x1", "resnet", "key-a", T0 + 40)
    rep = led.report(T0 + 60)
    m = rep.models["resnet"]
    assert set(m.by_key) == {"key-a", "key-b"}
    assert m.by_key["key-a"].cost == pytest.approx(m.cost * 2 / 3)
    assert sum(s.cost for s in m.by_key.values()) == pytest.approx(m.cost)
    assert m.by_key["key-a"].calls == 20 and m.unpriced_calls == 1


def test_json_shape() -> None:
    led = ledger()
    led.served("g1", "resnet", T0 + 1)
    doc = led.report(T0 + 60).to_json()
    assert doc["window_s"] == 3600 and doc["currency"] is None
    assert set(doc["pools"]["gpu"]) >= {"cost_per_hour", "replicas", "cost", "idle_cost"}
    assert set(doc["models"]["resnet"]) >= {"calls", "cost", "cost_per_1k", "by_pool"}
    assert doc["models"]["resnet"]["by_pool"]["gpu"]["calls"] == 1


def test_bad_window() -> None:
    with pytest.raises(ValueError):
        CostLedger(window_s=10, bucket_s=60)


# ---- the gateway's feed --------------------------------------------------------------------


def test_key_labels_are_bounded_and_never_the_key() -> None:
    digest_b = hashlib.sha256(KEY_B.encode()).hexdigest()
    cfg = config(models={"resnet": {"api_keys": [KEY_A, f"sha256:{digest_b}"]}, "bert": {}})
    keys = key_labels(cfg)
    assert set(keys) == {"resnet"}
    label_a = key_label({"x-api-key": KEY_A}, keys["resnet"])
    label_b = key_label({"authorization": f"Bearer {KEY_B}"}, keys["resnet"])
    assert label_a == "key-" + hashlib.sha256(KEY_A.encode()).hexdigest()[:8]
    assert label_b == "key-" + digest_b[:8]
    assert KEY_A not in str(label_a)
    assert key_label({"x-api-key": "someone-elses-key-123"}, keys["resnet"]) is None
    assert key_label({}, keys["resnet"]) is None


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_feed_counts_replica_answers_and_publishes_gauges() -> None:
    cfg = config(models={"resnet": {"api_keys": [KEY_A]}})
    clock = Clock(T0)
    mx = Metrics()
    feed = CostFeed(lambda: cfg, mx, clock)
    call = Call(protocol="rest", method="predict", model="resnet", version=None, label=None,
                signature="", headers={"x-api-key": KEY_A}, body=b"", deadline=None)
    for i in range(10):
        clock.t = T0 + i
        answer = Answer(200, replica="g1")
        feed.answered("resnet", answer)
        assert feed.keyed(call, answer) is answer
    feed.answered("resnet", Answer(200, replica="g1", cache="hit"))  # no replica time
    feed.answered("resnet", None)  # the gateway answered itself
    clock.t = T0 + 60
    feed.publish()
    doc = feed.to_json()
    assert doc["models"]["resnet"]["calls"] == 10
    assert list(doc["models"]["resnet"]["by_key"]) == [key_label(call.headers, key_labels(cfg)["resnet"])]
    per_1k = mx.registry.get_sample_value("infergate_cost_per_1k_predictions",
                                          {"pool": "gpu", "model": "resnet"})
    assert per_1k == pytest.approx(3.6 / 60 / 10 * 1000)
    assert mx.registry.get_sample_value("infergate_cost_last_hour", {"model": "resnet"}) \
        == pytest.approx(3.6 / 60)
    # Two hours later the calls left the window: the series go, they do not stay at old values.
    clock.t = T0 + 7200
    feed.publish()
    assert mx.registry.get_sample_value("infergate_cost_last_hour", {"model": "resnet"}) is None
    assert mx.registry.get_sample_value("infergate_cost_per_1k_predictions",
                                        {"pool": "gpu", "model": "resnet"}) is None


# ---- infergate scale simulate: the cost of a trace -------------------------------------------


def test_trace_cost_is_replicas_times_time_times_price(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    rows = ["t_s,rps,p95_latency_ms"] + [f"{i * 60},10,{500 if 5 <= i < 10 else 10}" for i in range(30)]
    trace.write_text("\n".join(rows) + "\n")
    policy = PoolScalePolicy(min_replicas=1, max_replicas=4, window_up_s=0, window_down_s=120)
    steps = simulate(load_trace(trace), policy)
    cost = trace_cost(steps, 3.0)
    # By hand: between two rows the pool has the replicas the earlier decision left it with.
    replica_s = sum(s.decision.desired_replicas * 60 for s in steps[:-1])
    assert cost.replica_hours == pytest.approx(replica_s / 3600)
    assert cost.scaled == pytest.approx(3.0 * replica_s / 3600)
    assert cost.peak_replicas == max(s.decision.desired_replicas for s in steps[:-1]) == 4
    assert cost.fixed == pytest.approx(4 * 29 * 60 / 3600 * 3.0)
    assert 0 < cost.scaled < cost.fixed
    assert trace_cost(steps[:1], 3.0).scaled == 0.0


def test_simulate_reports_cost_when_the_pool_is_priced(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("pools: {gpu: {cost_per_hour: 2.5}}\nautoscale:\n  gpu: {max_replicas: 20}\n")
    args = ["simulate", "--trace", str(RAMP), "--config", str(cfg), "--png", str(tmp_path / "x.png")]
    assert scale_main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "peak 20 replicas" in out and "at 2.5 per replica-hour" in out
    assert "for a fixed fleet of 20 (the peak)" in out
    assert scale_main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    c = doc["cost"]
    assert c["cost_per_hour"] == 2.5 and c["peak_replicas"] == 20
    assert c["scaled"] == pytest.approx(c["replica_hours"] * 2.5, abs=1e-5)
    assert c["fixed_peak"] == pytest.approx(20 * c["duration_s"] / 3600 * 2.5)
    assert c["saving"] == pytest.approx(c["fixed_peak"] - c["scaled"], abs=1e-5) and c["saving"] > 0
    assert doc["summary"]["peak_replicas"] == 20 and len(doc["decisions"]) == doc["summary"]["decisions"]
    # Unpriced: no cost line, and null in JSON.
    cfg.write_text("autoscale:\n  gpu: {max_replicas: 20}\n")
    assert scale_main([*args, "--quiet"]) == 0
    assert "per replica-hour" not in capsys.readouterr().out
    assert scale_main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost"] is None
    cfg.write_text("pools: {gpu: {cost_per_hour: cheap}}\nautoscale:\n  gpu: {max_replicas: 20}\n")
    assert scale_main(args) == 2
    assert "pools.gpu.cost_per_hour" in capsys.readouterr().err
