"""Hedging is opt-in per model with its own budget: `hedge: {delay_ms, budget_ratio}` caps the
hedged share of that model's calls at budget_ratio (plus a small floor).

Every replica answers in 40 ms and the hedge delay is 5 ms, so every call is slow enough to be
hedged and the budget alone decides how many are. Counted from infergate_hedges_total.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.conftest import MODEL, Slot, drill_config
from tests.faults.drill import assert_no_failures, counter_total
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
