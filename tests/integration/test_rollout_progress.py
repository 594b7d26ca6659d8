"""Canary rollouts end to end: a healthy canary walks every step and is promoted; a canary that
fails, is slow or answers differently is rolled back within its first step, and only about that
step's share of client calls ever saw it.

Real replicas (see test_rollout_support: "stable" serves version 1, "canary" versions 2 and 3,
3 answering like 1), a real gateway, client traffic from three threads. Steps are 10 -> 50 ->
100 %, 2 s and 30 canary calls each. Rollout transitions are also checked as they reach a real
webhook receiver.

Bound on the calls that saw a bad canary: every canary call happened at the first step's
weight (10 %), so of the n calls started before the rollback was seen, at most
n * 0.10 + 4 sd + 3 (the three calls in flight) may have reached the canary; after the rollback
none does.

The canary replica of these bad canaries is alone in its replica pool: outlier ejection never
ejects more than half of a pool, so it stays in place and every failure reaches the rollout.
What happens when the failing canary IS ejected is the last test (expected to fail until the
rollout learns of it).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.test_rollout_support import (  # noqa: F401 - fixtures
    CANARY_REPLICA,
    MODEL,
    STABLE_ANSWER,
    STABLE_REPLICA,
    V2_ANSWER,
    RolloutFleet,
    WebhookReceiver,
    answer,
    by_replica,
    by_version,
    fast_rollout,
    fleet_knobs_fixture,
    gateway_cfg,
    kinds,
    rfleet_fixture,
    rollout,
    share_bound,
    traffic,
    wait_gateway_sees,
    wait_rollout,
    webhook_fixture,
)
from tests.integration.test_routing_support import Req, fire

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
CONCURRENCY = 3


def test_healthy_canary_walks_every_step_and_is_promoted(
        fleet_knobs: RolloutFleet, gateway_factory: Any, webhook: WebhookReceiver) -> None:
    webhook.clear()
    # Both arms are the same model on two processes of a shared two-core machine: their latency
    # differs by scheduling noise only, so the latency limit is wide here (the slow-canary test
    # below holds the default 1.2).
    cfg = gateway_cfg(fleet_knobs, 3, rollout=fast_rollout(max_p95_ratio=10.0),
                      webhooks=[{"url": webhook.url}])
    gw = gateway_factory(cfg)
    wait_gateway_sees(gw, [1, 3])
    ro = rollout(gw)
    assert (ro["state"], ro["step"], ro["weight"]) == ("progressing", 1, 10)
    assert (ro["stable_version"], ro["canary_version"]) == (1, 3)

    t0 = time.monotonic()
    with traffic(gw, CONCURRENCY) as bg:
        ro = wait_rollout(gw, 40, "the healthy canary to be promoted", state="promoted")
    took = time.monotonic() - t0
    results = bg.results
    assert [r for r in results if r.status != 200] == []
    assert {answer(r) for r in results} == {STABLE_ANSWER}
    assert ro["weight"] == 100 and ro["promote_to"] == 3
    # Every step was walked, in order, none skipped, and the last one promoted.
    steps = [(h["kind"], h["step"], h["weight"]) for h in ro["history"]]
    assert steps == [("step", 2, 50), ("step", 3, 100), ("promoted", 3, 100)], steps
    assert "step 3 passed" in ro["reason"]
    print(f"healthy canary promoted after {len(results)} calls in {took:.1f} s; "
          f"versions {dict(by_version(results))}")

    # After promotion the stable label names the canary's version, for calls by label too.
    for path in (f"/v1/models/{MODEL}/labels/stable:predict", f"/v1/models/{MODEL}:predict"):
        after = fire(gw.rest_url, [Req(path=path)] * 30, concurrency=CONCURRENCY)
        assert by_version(after) == {"3": 30}, (path, by_version(after))
        assert by_replica(after) == {CANARY_REPLICA: 30}
        assert {answer(r) for r in after} == {STABLE_ANSWER}

    # The transitions reached the webhook as JSON, in order.
    webhook.wait_kind("promoted")
    events = webhook.rollout_events()
    assert [(e["kind"], e["weight"]) for e in events] == [("step", 50), ("step", 100),
                                                          ("promoted", 100)]
    assert all(e["_content_type"].startswith("application/json") for e in events)
    assert events[-1]["state"] == "promoted" and events[-1]["model"] == MODEL


BAD_CANARIES = {
    # name: (canary version, replica knobs, the check that must roll it back)
    "errors_20pct": (3, {"error_rate": 0.2}, "error_rate"),
    "latency_plus_100ms": (3, {"latency_ms": 100}, "p95_ratio"),
    "different_answers": (2, {}, "agreement"),
}


@pytest.mark.parametrize("kind", list(BAD_CANARIES))
def test_bad_canary_is_rolled_back_within_its_first_step(
        kind: str, fleet_knobs: RolloutFleet, gateway_factory: Any,
        webhook: WebhookReceiver) -> None:
    webhook.clear()
    version, knobs, check = BAD_CANARIES[kind]
    cfg = gateway_cfg(fleet_knobs, version, rollout=fast_rollout(), canary_pool="canary",
                      webhooks=[{"url": webhook.url}])
    gw = gateway_factory(cfg)
    wait_gateway_sees(gw, [1, version])
    if knobs:
        fleet_knobs.canary.set_knobs(**knobs)
    t0 = time.monotonic()
    with traffic(gw, CONCURRENCY) as bg:
        ro = wait_rollout(gw, 30, f"the {kind} canary to be rolled back", state="rolled_back")
        seen_at = time.monotonic()
        bg.wait_for(60)  # traffic after the rollback: none of it may reach the canary
    results = bg.results

    # Rolled back in the first step (no step passed), for the expected reason.
    assert (ro["step"], ro["weight"]) == (1, 0)
    assert kinds(ro) == ["rolled_back"], ro["history"]
    assert check in ro["reason"], ro["reason"]

    before = [r for r in results if r.started < seen_at]
    after = [r for r in results if r.started >= seen_at]
    canary = [r for r in before if r.headers.get("x-infergate-replica") == CANARY_REPLICA]
    bound = share_bound(len(before), 10, slack=CONCURRENCY)
    print(f"{kind}: rolled back after {seen_at - t0:.1f} s; {len(canary)} of {len(before)} "
          f"client calls saw the canary (bound {bound}); reason: {ro['reason']}")
    assert 0 < len(canary) <= bound
    assert len(after) >= 60 and by_replica(after) == {STABLE_REPLICA: len(after)}
    assert {answer(r) for r in after} == {STABLE_ANSWER}
    # What clients saw from the canary is what the canary was made to do.
    if kind == "errors_20pct":
        assert any(r.status != 200 for r in canary)
        assert all(r.status == 200 for r in results if r not in canary)
    elif kind == "different_answers":
        assert {answer(r) for r in canary} == {V2_ANSWER}
        assert ro["calls"]["compared"] >= 20 and ro["calls"]["agreed"] == 0
    else:
        assert all(r.status == 200 for r in results)
        slow = sorted(r.ended - r.started for r in canary)
        assert slow[len(slow) // 2] >= 0.1  # the knob's delay is a floor, not a timing claim

    event = webhook.wait_kind("rolled_back")
    assert (event["state"], event["step"], event["weight"]) == ("rolled_back", 1, 0)
    assert check in event["reason"]


def test_failing_canary_ejected_as_an_outlier_is_still_rolled_back(
        fleet_knobs: RolloutFleet, gateway_factory: Any) -> None:
    # Stable and canary in one pool: the canary replica may be ejected.
    gw = gateway_factory(gateway_cfg(fleet_knobs, 3, rollout=fast_rollout()))
    wait_gateway_sees(gw, [1, 3])
    fleet_knobs.canary.set_knobs(error_rate=1.0)
    with traffic(gw, CONCURRENCY):
        # Healthy code rolls back after ~20 canary calls, i.e. ~200 client calls (~2 s).
        ro = wait_rollout(gw, 12, "the failing canary to be rolled back", state="rolled_back")
    assert "error_rate" in ro["reason"] or "canary" in ro["reason"]
