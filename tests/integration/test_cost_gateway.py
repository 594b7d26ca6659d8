"""GET /api/cost and the cost gauges from a real gateway in front of a real replica.

One replica process is named three times: r0 priced by its pool (gpu, 3.6 an hour), r1 a spot
replica of the same pool at its own 0.72, r2 in a pool without a price. After a known number of
calls, the pool's cost is its price over the time the gateway has run, the calls the priced
replicas answered carry all of it that was not idle, r2 is named unpriced, the API key shows as a
bounded label (never itself), and a reload re-prices the pool.
"""

from __future__ import annotations

import hashlib
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import model_config
from tests.integration.gwproc import GatewayProc, http
from tests.support.procs import ReplicaProc, start_redis, start_replica

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY = "cost-test-key-0123456789"
CALLS = 60


@pytest.fixture(scope="module")
def replica(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProc]:
    cfg = model_config(models_dir, tmp_path_factory.mktemp("cost") / "models.config")
    r = start_replica(cfg, name="cost")
    yield r
    r.stop()


def entry(r: ReplicaProc, name: str, pool: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "rest": f"127.0.0.1:{r.rest_port}", "grpc": f"127.0.0.1:{r.grpc_port}",
            "pool": pool, **extra}


def config(replica: ReplicaProc, gpu_price: float) -> dict[str, Any]:
    return {
        "pools": {"gpu": {"cost_per_hour": gpu_price}},
        "replicas": [entry(replica, "r0", "gpu"), entry(replica, "r1", "gpu", cost_per_hour=0.72),
                     entry(replica, "r2", "cpu")],
        "models": {"half_plus_two": {"api_keys": [KEY]}},
    }


def test_api_cost_matches_prices_and_calls(replica: ReplicaProc, gateway_factory: Any) -> None:
    spawned = time.monotonic()
    g: GatewayProc = gateway_factory(config(replica, 3.6))
    ready = time.monotonic()
    served: dict[str, int] = {}
    for _ in range(CALLS):
        status, headers, _ = http("POST", g.rest_url + "/v1/models/half_plus_two:predict",
                                  {"instances": [1.0]}, headers={"x-api-key": KEY})
        assert status == 200
        served[headers["x-infergate-replica"]] = served.get(headers["x-infergate-replica"], 0) + 1
    asking = time.monotonic()
    status, doc = g.api("/api/cost")
    asked = time.monotonic()
    assert status == 200
    assert doc["window_s"] == 3600 and doc["currency"] is None
    assert doc["unpriced"] == ["r2"]
    assert set(doc["pools"]) == {"gpu"}
    gpu = doc["pools"]["gpu"]
    assert gpu["replicas"] == 2 and gpu["cost_per_hour"] == pytest.approx(4.32)
    # The pool cost its price for as long as the ledger has run (from start-up to this answer).
    assert asking - ready <= doc["covered_s"] <= asked - spawned
    assert gpu["cost"] == pytest.approx(4.32 * doc["covered_s"] / 3600, rel=0.01, abs=2e-6)
    m = doc["models"]["half_plus_two"]
    priced = served.get("r0", 0) + served.get("r1", 0)
    assert m["calls"] == priced and m["unpriced_calls"] == served.get("r2", 0)
    assert m["calls"] + m["unpriced_calls"] == CALLS and m["calls"] > 0
    # Everything the pool cost went to these calls or to idle time, and nothing more.
    assert m["cost"] + gpu["idle_cost"] == pytest.approx(gpu["cost"], abs=5e-6)
    assert m["cost"] > 0
    assert m["cost_per_1k"] == pytest.approx(m["cost"] * 1000 / m["calls"], rel=0.01, abs=1e-5)
    assert m["by_pool"]["gpu"]["calls"] == priced
    # The key is a bounded label (its SHA-256 prefix), never the key itself.
    label = "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:8]
    assert list(m["by_key"]) == [label] and m["by_key"][label]["calls"] == priced
    assert KEY not in str(doc)

    # The gauges are refreshed every 5 s.
    deadline = time.monotonic() + 15
    text = ""
    while time.monotonic() < deadline:
        text = g.metrics()
        if 'infergate_cost_per_1k_predictions{model="half_plus_two",pool="gpu"}' in text:
            break
        time.sleep(0.5)
    assert 'infergate_cost_per_1k_predictions{model="half_plus_two",pool="gpu"}' in text
    assert 'infergate_cost_last_hour{model="half_plus_two"}' in text
    assert KEY not in text

    # A reload with another price re-prices the pool from then on.
    status, out = g.reload(config(replica, 7.2))
    assert status == 200, out
    status, doc = g.api("/api/cost")
    assert doc["pools"]["gpu"]["cost_per_hour"] == pytest.approx(7.92)


def test_gateways_on_one_redis_share_the_fleets_cost(replica: ReplicaProc,
                                                     tmp_path: pathlib.Path) -> None:
    """Two gateways on one Redis, 30 calls through the first and 10 through the second, to the
    same priced replicas: each charges its own calls their share of the fleet's cost, so both
    report about the same cost per 1k (alone, the second would charge the whole fleet to its
    10 calls: 4x), and their model costs add up to what the pool cost."""
    redis = start_redis()
    cfg = {**config(replica, 3.6), "cache": {"store": redis.url}}
    cfg["replicas"] = cfg["replicas"][:2]  # r0 and r1: priced
    gws = [GatewayProc(cfg, tmp_path / f"gw{i}", name=f"gw{i}") for i in range(2)]
    try:
        for g, calls in zip(gws, (30, 10), strict=True):
            for _ in range(calls):
                status, _, _ = http("POST", g.rest_url + "/v1/models/half_plus_two:predict",
                                    {"instances": [1.0]}, headers={"x-api-key": KEY})
                assert status == 200

        def shared() -> list[dict[str, Any]] | None:
            docs = [g.api("/api/cost")[1] for g in gws]
            return docs if all(d["gateways"] == 2 for d in docs) else None

        deadline = time.monotonic() + 20  # every 5 s each publishes and reads the other
        docs = shared()
        while docs is None and time.monotonic() < deadline:
            time.sleep(0.5)
            docs = shared()
        assert docs is not None, "the gateways never counted each other"
        # Read again once both have exchanged counts, after their calls (no call since).
        time.sleep(5.5)
        docs = [g.api("/api/cost")[1] for g in gws]
        first, second = (d["models"]["half_plus_two"] for d in docs)
        assert (first["calls"], second["calls"]) == (30, 10)
        ratio = second["cost_per_1k"] / first["cost_per_1k"]
        assert 0.7 < ratio < 1.4, (first, second)  # each ledger's cost runs from its own start
        for d in docs:
            gpu = d["pools"]["gpu"]
            assert gpu["peer_cost"] > 0
            assert d["models"]["half_plus_two"]["cost"] + gpu["peer_cost"] + gpu["idle_cost"] \
                == pytest.approx(gpu["cost"], abs=5e-6)
        pool = max(d["pools"]["gpu"]["cost"] - d["pools"]["gpu"]["idle_cost"] for d in docs)
        assert first["cost"] + second["cost"] == pytest.approx(pool, rel=0.3)
    finally:
        for g in gws:
            g.stop()
        redis.stop()
