"""Sticky sessions end to end: a session key (header or cookie) pins a call to one replica, the
same replica in every gateway process, and a call without a key is balanced and counted.

Three real replicas; two gateway processes on the same fleet must agree key by key, and with the
pure bounded-load consistent-hash table of policies/sticky.py built for the same members.
"""

from __future__ import annotations

import pathlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from policies.sticky import StickyTable
from tests.integration.conftest import Fleet, start_fleet
from tests.integration.gwproc import GatewayProc
from tests.integration.test_routing_support import Req, failures, fire, metric

MODEL = "half_plus_two"
KEYS = [f"session-{i}" for i in range(100)]


@pytest.fixture(scope="module")
def fleet3(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(models_dir, tmp_path_factory.mktemp("fleet3"), n=3)
    yield f
    for r in f.replicas:
        r.stop()


def sticky_cfg(fleet: Fleet) -> dict[str, Any]:
    return {"replicas": fleet.replica_cfg(),
            "models": {MODEL: {"sticky": {"header": "x-session-id", "cookie": "sid"},
                               "balance": "least_request"}}}


@pytest.fixture(scope="module")
def gws(fleet3: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProc]]:
    started: list[GatewayProc] = []
    try:
        for name in ("gw-a", "gw-b"):
            started.append(GatewayProc(sticky_cfg(fleet3), tmp_path_factory.mktemp(name), name=name))
        yield started
    finally:
        for g in started:
            g.stop()


def pinned(g: GatewayProc, reqs: list[Req], key_of: Any) -> dict[str, set[str]]:
    results = fire(g.rest_url, reqs)
    assert failures(results) == []
    out: dict[str, set[str]] = {}
    for req, res in zip(reqs, results, strict=True):
        out.setdefault(key_of(req), set()).add(res.replica)
    return out


def test_header_key_pins_one_replica_in_every_gateway(gws: list[GatewayProc]) -> None:
    reqs = [Req(headers={"x-session-id": k}) for _ in range(3) for k in KEYS]
    by_gateway = [pinned(g, reqs, lambda r: r.headers["x-session-id"]) for g in gws]
    for seen in by_gateway:
        assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}
    a, b = ({k: next(iter(v)) for k, v in seen.items()} for seen in by_gateway)
    assert a == b
    spread = Counter(a.values())
    print(f"100 session keys over 3 replicas: {dict(sorted(spread.items()))}")
    assert set(spread) == {"r0", "r1", "r2"}
    # Each table owner holds at most c = 1.25 times its fair share of the keyspace, and the keys
    # land where the pure table says: nothing about the mapping is process-local.
    table = StickyTable([("r0", 1.0), ("r1", 1.0), ("r2", 1.0)], c=1.25)
    assert a == {k: table.lookup(k) for k in KEYS}


def test_cookie_key_pins_like_the_header(gws: list[GatewayProc]) -> None:
    g = gws[0]
    header = pinned(g, [Req(headers={"x-session-id": k}) for k in KEYS[:30]],
                    lambda r: r.headers["x-session-id"])
    reqs = [Req(headers={"Cookie": f"theme=dark; sid={k}; lang=en"}) for _ in range(3)
            for k in KEYS[:30]]
    cookie = pinned(g, reqs, lambda r: r.headers["Cookie"].split("sid=")[1].split(";")[0])
    assert all(len(v) == 1 for v in cookie.values())
    assert cookie == header


def test_call_without_key_is_balanced_and_counted(gws: list[GatewayProc]) -> None:
    g = gws[0]
    before = metric(g.metrics(), "infergate_sticky_key_missing_total", model=MODEL)
    # No key at all, an empty header, and a cookie that is not the configured one.
    reqs = ([Req()] * 60 + [Req(headers={"x-session-id": ""})] * 30
            + [Req(headers={"Cookie": "other=1; sidx=2"})] * 30)
    results = fire(g.rest_url, reqs, concurrency=4)
    assert failures(results) == []
    spread = Counter(r.replica for r in results)
    print(f"120 keyless calls: {dict(sorted(spread.items()))}")
    assert set(spread) == {"r0", "r1", "r2"}
    assert max(spread.values()) < 0.6 * len(reqs)
    after = metric(g.metrics(), "infergate_sticky_key_missing_total", model=MODEL)
    assert after - before == len(reqs)
    # Calls that carry a key are not counted.
    fire(g.rest_url, [Req(headers={"x-session-id": "k"})] * 10)
    assert metric(g.metrics(), "infergate_sticky_key_missing_total", model=MODEL) == after


def test_keys_of_an_ejected_replica_move_and_the_rest_stay(fleet3: Fleet, gateway_factory: Any) -> None:
    g = gateway_factory(sticky_cfg(fleet3), name="gw-eject")
    table3 = StickyTable([("r0", 1.0), ("r1", 1.0), ("r2", 1.0)], c=1.25)
    table2 = StickyTable([("r0", 1.0), ("r1", 1.0)], c=1.25)
    on_r2 = [k for k in KEYS if table3.lookup(k) == "r2"]
    fleet3.replicas[2].set_knobs(error_rate=1.0)
    try:
        # r2 now fails every inference call: its keys are retried elsewhere until the outlier
        # detector ejects it, after which the table is the one for the two that remain.
        for _ in range(20):
            fire(g.rest_url, [Req(headers={"x-session-id": k}) for k in on_r2[:5]], concurrency=1)
            _, reps = g.api("/api/replicas")
            if not {r["name"]: r["routable"] for r in reps["replicas"]}["r2"]:
                break
        else:
            pytest.fail("r2 was never ejected")
        moved = pinned(g, [Req(headers={"x-session-id": k}) for _ in range(2) for k in KEYS],
                       lambda r: r.headers["x-session-id"])
    finally:
        fleet3.replicas[2].set_knobs(error_rate=0.0)
    now = {k: next(iter(v)) for k, v in moved.items()}
    assert all(len(v) == 1 for v in moved.values())
    assert now == {k: table2.lookup(k) for k in KEYS}
    stayed = sum(1 for k in KEYS if k not in on_r2 and now[k] == table3.lookup(k))
    print(f"after ejecting r2: {len(on_r2)} keys moved, {stayed}/{len(KEYS) - len(on_r2)} others stayed")
    assert stayed >= 0.9 * (len(KEYS) - len(on_r2))
