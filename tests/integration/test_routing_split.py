"""Traffic policies end to end: weighted splits, header/regex/present/method rules and user
bucketing, through a real gateway in front of two real replicas serving half_plus_two v1 and v2.

Which arm served a call is read from the answer (v1 = 0.5 x + 2, v2 = 0.5 x + 3). Shares are
checked against Binomial(n, p) within 4 standard deviations: a correct split fails that check
about once in 16,000 runs, while a split off by a few points fails it almost always at n = 2,000.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from policies.split import WeightedSplit
from tests.integration.conftest import Fleet
from tests.integration.gwproc import GatewayProc
from tests.integration.test_routing_support import (
    Req,
    failures,
    fire,
    metric,
    version_counts,
    within_sigmas,
)

MODEL = "half_plus_two"
REGRESS = "/v1/models/half_plus_two:regress"
REGRESS_BODY = json.dumps({"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}).encode()

ROUTES: list[dict[str, Any]] = [
    {"match": {"headers": {"x-canary": "always"}}, "split": {"canary": 100}},
    {"match": {"headers": {"x-tier": {"regex": "gold|platinum"}}}, "split": {"canary": 100}},
    {"match": {"headers": {"x-debug": {"present": True}}}, "split": {"stable": 100}},
    {"match": {"methods": ["regress", "classify"]}, "split": {"stable": 100}},
    {"split": {"stable": 90, "canary": 10}, "bucket_by": "x-user-id"},
]


@pytest.fixture(scope="module")
def gw(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = {"replicas": fleet.replica_cfg(),
           "models": {MODEL: {"labels": {"stable": 1, "canary": 2}, "routes": ROUTES,
                              "balance": "least_request"}}}
    g = GatewayProc(cfg, tmp_path_factory.mktemp("gw-split"))
    yield g
    g.stop()


def arm_of_user(user: str) -> str:
    """The arm the gateway must give ``user``: the split is a pure function of (model, user)."""
    return WeightedSplit([("stable", 90.0), ("canary", 10.0)], salt=MODEL).pick(user, random.Random())


def users_on(arm: str, n: int) -> list[str]:
    found = [u for u in (f"user-{i}" for i in range(2000)) if arm_of_user(u) == arm]
    assert len(found) >= n
    return found[:n]


def test_90_10_split_within_4_sigma(gw: GatewayProc) -> None:
    n = 2000
    before = gw.metrics()
    results = fire(gw.rest_url, [Req()] * n)
    assert failures(results) == []
    counts = version_counts(results)
    assert set(counts) <= {1, 2}
    ok, msg = within_sigmas(counts[2], n, 0.10)
    print(f"90/10 split: canary {msg}")
    assert ok, msg
    # Both arms are spread over both replicas, and the split counter agrees with the answers.
    assert {r.replica for r in results if r.version == 2} == {"r0", "r1"}
    after = gw.metrics()
    for arm, version in (("stable", 1), ("canary", 2)):
        delta = (metric(after, "infergate_split_arm_total", model=MODEL, arm=arm)
                 - metric(before, "infergate_split_arm_total", model=MODEL, arm=arm))
        assert delta == counts[version], arm


def test_header_rule_overrides_the_split(gw: GatewayProc) -> None:
    stable_user = users_on("stable", 1)[0]
    reqs = [Req(headers={"X-Canary": "always", "x-user-id": stable_user})] * 100
    assert version_counts(fire(gw.rest_url, reqs)) == {2: 100}
    # Exact means exact: another value falls through to the (bucketed) split.
    reqs = [Req(headers={"x-canary": "Always", "x-user-id": stable_user})] * 20
    assert version_counts(fire(gw.rest_url, reqs)) == {1: 20}


def test_regex_rule_is_a_full_match(gw: GatewayProc) -> None:
    stable_user = users_on("stable", 1)[0]
    for tier, version in [("gold", 2), ("platinum", 2), ("gold-plus", 1), ("silver", 1), ("", 1)]:
        reqs = [Req(headers={"x-tier": tier, "x-user-id": stable_user})] * 10
        assert version_counts(fire(gw.rest_url, reqs)) == {version: 10}, tier


def test_present_rule_and_first_match_wins(gw: GatewayProc) -> None:
    canary_user = users_on("canary", 1)[0]
    # x-debug present (even empty) -> stable, although the user's bucket is the canary.
    for value in ["1", "anything", ""]:
        reqs = [Req(headers={"x-debug": value, "x-user-id": canary_user})] * 10
        assert version_counts(fire(gw.rest_url, reqs)) == {1: 10}, value
    assert version_counts(fire(gw.rest_url, [Req(headers={"x-user-id": canary_user})] * 10)) == {2: 10}
    # Both rules match: the first in config order (x-canary -> canary) wins.
    reqs = [Req(headers={"x-debug": "1", "x-canary": "always"})] * 10
    assert version_counts(fire(gw.rest_url, reqs)) == {2: 10}


def test_method_rule(gw: GatewayProc) -> None:
    canary_user = users_on("canary", 1)[0]
    reqs = [Req(path=REGRESS, body=REGRESS_BODY, headers={"x-user-id": canary_user})] * 20
    results = fire(gw.rest_url, reqs)
    assert failures(results) == []
    assert version_counts(results) == {1: 20}  # regress -> stable, whatever the bucket
    assert version_counts(fire(gw.rest_url, [Req(headers={"x-user-id": canary_user})] * 20)) == {2: 20}


def test_bucket_by_user_is_stable(gw: GatewayProc) -> None:
    users = [f"u{i:03d}" for i in range(200)]
    reqs = [Req(headers={"x-user-id": u}) for _ in range(5) for u in users]
    results = fire(gw.rest_url, reqs)
    assert failures(results) == []
    seen: dict[str, set[int | None]] = {}
    for req, res in zip(reqs, results, strict=True):
        seen.setdefault(req.headers["x-user-id"], set()).add(res.version)
    assert all(len(v) == 1 for v in seen.values()), {u: v for u, v in seen.items() if len(v) > 1}
    on_canary = sum(1 for v in seen.values() if v == {2})
    ok, msg = within_sigmas(on_canary, len(users), 0.10)
    print(f"bucketed users on the canary: {msg}")
    assert ok, msg
    # The arm is the pure function of (model, user) every gateway process computes.
    assert all(seen[u] == {1 if arm_of_user(u) == "stable" else 2} for u in users)
