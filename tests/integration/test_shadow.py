"""Shadow traffic end to end: `shadow: {target: canary, percent: 100}` mirrors every call to the
canary replica, compares the answers, and never changes nor delays what the client gets.

Real replicas (test_rollout_support: "stable" serves version 1, "canary" versions 2 and 3; 3
answers like 1, 2 differently) and a real gateway. The mirrored calls are counted where they
land, by the canary replica itself (infergate_replica_inference_total), and by the gateway's
infergate_shadow_requests_total{outcome=agree|disagree}.

Bound on the slow shadow target (300 ms added by the replica's knob): the median client latency
with the shadow on stays below the median without it + 200 ms, i.e. below the shadow's own
delay; the two medians are taken from interleaved batches on the same machine, so the check
compares, it does not time.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from tests.integration.gwproc import GatewayProc
from tests.integration.test_rollout_support import (  # noqa: F401 - fixtures
    MODEL,
    STABLE_ANSWER,
    STABLE_REPLICA,
    RolloutFleet,
    answer,
    by_replica,
    by_version,
    fleet_knobs_fixture,
    gateway_cfg,
    rfleet_fixture,
    wait_gateway_sees,
)
from tests.integration.test_routing_support import Req, Res, fire, metric, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
SHADOW = {"target": "canary", "percent": 100}


def shadow_count(gw: GatewayProc, outcome: str) -> float:
    return metric(gw.metrics(), "infergate_shadow_requests_total", model=MODEL, outcome=outcome)


def assert_stable_answers(results: list[Res]) -> None:
    assert [r for r in results if r.status != 200] == []
    assert {answer(r) for r in results} == {STABLE_ANSWER}
    assert by_version(results) == {"1": len(results)}
    assert by_replica(results) == {STABLE_REPLICA: len(results)}


@pytest.mark.parametrize(("canary_version", "outcome"), [(3, "agree"), (2, "disagree")])
def test_shadow_mirrors_every_call_and_never_changes_the_answer(
        canary_version: int, outcome: str, fleet_knobs: RolloutFleet,
        gateway_factory: Any) -> None:
    gw = gateway_factory(gateway_cfg(fleet_knobs, canary_version, shadow=SHADOW))
    wait_gateway_sees(gw, [1, canary_version])
    n = 200
    canary_before = fleet_knobs.canary.request_count(MODEL)
    stable_before = fleet_knobs.stable.request_count(MODEL)

    results = fire(gw.rest_url, [Req()] * n, concurrency=3)
    assert_stable_answers(results)  # whatever the shadow answered (v2: 3.5), clients got v1's

    wait_until(lambda: shadow_count(gw, outcome) >= n, 20, f"{n} shadow results {outcome!r}")
    assert fleet_knobs.canary.request_count(MODEL) - canary_before == n
    assert fleet_knobs.stable.request_count(MODEL) - stable_before == n
    text = gw.metrics()
    counts = {o: metric(text, "infergate_shadow_requests_total", model=MODEL, outcome=o)
              for o in ("agree", "disagree", "error", "skipped")}
    assert counts == {"agree": 0.0, "disagree": 0.0, "error": 0.0, "skipped": 0.0, outcome: n}
    print(f"shadow to version {canary_version}: {counts}")


def _timed(gw: GatewayProc, n: int) -> list[float]:
    results = fire(gw.rest_url, [Req()] * n, concurrency=1)
    assert_stable_answers(results)
    return [r.ended - r.started for r in results]


def test_slow_shadow_target_does_not_slow_client_answers(
        fleet_knobs: RolloutFleet, gateway_factory: Any) -> None:
    plain = gateway_factory(gateway_cfg(fleet_knobs, 3), name="plain")
    shadowed = gateway_factory(gateway_cfg(fleet_knobs, 3, shadow=SHADOW), name="shadowed")
    wait_gateway_sees(plain, [1, 3])
    wait_gateway_sees(shadowed, [1, 3])
    fleet_knobs.canary.set_knobs(latency_ms=300)
    canary_before = fleet_knobs.canary.request_count(MODEL)
    without: list[float] = []
    with_: list[float] = []
    for _ in range(3):  # interleaved batches: both see the same machine load
        without += _timed(plain, 15)
        with_ += _timed(shadowed, 15)
    med_without, med_with = statistics.median(without), statistics.median(with_)
    print(f"median client latency: without shadow {med_without * 1000:.1f} ms, "
          f"with a 300 ms shadow {med_with * 1000:.1f} ms")
    assert med_with < med_without + 0.2

    # The slow target still got, and answered, every mirrored call.
    wait_until(lambda: shadow_count(shadowed, "agree") >= len(with_), 30, "the slow shadow results")
    assert fleet_knobs.canary.request_count(MODEL) - canary_before == len(with_)
    assert shadow_count(plain, "agree") == 0
