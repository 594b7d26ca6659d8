"""Hedging is opt-in per model with its own budget: `hedge: {delay_ms, budget_ratio}` caps the
hedged share of that model's calls at budget_ratio (plus a small floor).

Every replica answers in 40 ms and the hedge delay is 5 ms, so every call is slow enough to be
hedged and the budget alone decides how many are. Counted from infergate_hedges_total.

A hedge's losing copy is cancelled: that is neither a failure (the replica is not ejected) nor
a latency sample, yet the time it waited is a lower bound on the replica's latency, so a
stalled replica whose calls are all hedged away is still learned slow and avoided.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.conftest import MODEL, Slot, drill_config
from tests.faults.drill import assert_no_failures, counter_total, replicas_view
from tests.faults.load import Load, rest_predict_client

pytestmark = pytest.mark.integration

CALLS = 300


def hedged_share(fleet3: list[Slot], gateway_factory: Any, budget_ratio: float) -> float:
    for s in fleet3:
        assert s.proc is not None
        s.proc.set_knobs(latency_ms=40)
    cfg = drill_config(fleet3)
    cfg["models"][MODEL]["hedge"] = {"delay_ms": 5, "budget_ratio": budget_ratio}
    g = gateway_factory(cfg)
    load = Load(f"hedging, budget_ratio {budget_ratio}",
                rest_predict_client("127.0.0.1", g.rest_port), concurrency=8,
                max_calls=CALLS).start()
    report = load.join(60.0)
    hedges = counter_total(g, "infergate_hedges_total")
    print(f"\n{report.summary()}; hedges={hedges} ({hedges / CALLS:.0%} of calls)")
    assert_no_failures(report)
    return hedges / CALLS


def test_default_hedge_budget_caps_hedges(fleet3: list[Slot], gateway_factory: Any) -> None:
    """budget_ratio 0.05: about 5 % of calls plus the floor, far from every call."""
    assert hedged_share(fleet3, gateway_factory, 0.05) < 0.25


def test_model_hedge_budget_ratio_is_honoured(fleet3: list[Slot], gateway_factory: Any) -> None:
    """budget_ratio 1.0: the budget allows a hedge for every call, so nearly all are hedged."""
    assert hedged_share(fleet3, gateway_factory, 1.0) > 0.8


def test_a_replica_hedged_away_is_learned_slow_not_ejected(fleet3: list[Slot],
                                                          gateway_factory: Any) -> None:
    """r0 answers in 400 ms, r1 and r2 at once; hedge after 50 ms with budget for every call.
    Each copy sent to r0 loses to its hedge and is cancelled: r0 stays in rotation (never
    ejected, no errors) but its estimate rises to what it waited, so least_loaded stops sending
    it calls and only the first one or two are hedged. Counting cancelled copies as nothing kept r0 looking
    unmeasured and idle: it drew a call whenever it had none in flight, and each was hedged."""
    r0 = fleet3[0]
    assert r0.proc is not None
    r0.proc.set_knobs(latency_ms=400)
    cfg = drill_config(fleet3)
    cfg["models"][MODEL].update(balance="least_loaded",
                                hedge={"delay_ms": 50, "budget_ratio": 1.0})
    g = gateway_factory(cfg)
    load = Load("hedging, one replica stalled", rest_predict_client("127.0.0.1", g.rest_port),
                concurrency=4, max_calls=5 * CALLS).start()
    report = load.join(60.0)
    hedges = counter_total(g, "infergate_hedges_total")
    view = replicas_view(g)
    print(f"\n{report.summary()}; hedges={hedges}; "
          + ", ".join(f"{n}: {v['requests']} calls, {v['latency_ms']} ms, {v['state']}"
                      for n, v in sorted(view.items())))
    assert_no_failures(report)
    assert view["r0"]["state"] == "up" and view["r0"]["errors"] == 0
    # Its estimate is at least the hedge delay it waited (decayed a little since): measured, not
    # "no data" (0), and it was left alone after the first copy or two.
    assert view["r0"]["latency_ms"] >= 25
    assert view["r0"]["requests"] <= 5 and hedges <= 5
