"""The gateway as a subprocess in front of two real replicas: routing by version and label,
headers on every answer, pass-through of TF Serving's own errors, metrics, reload."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from tests.integration.gwproc import GatewayProc, http

BODY = {"instances": [1.0, 2.0, 5.0]}
V1 = [2.5, 3.0, 4.5]
V2 = [3.5, 4.0, 5.5]


@pytest.fixture(scope="module")
def gw(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = {"replicas": fleet.replica_cfg(),
           "models": {"half_plus_two": {"labels": {"stable": 1, "canary": 2, "future": 7},
                                        "cache": {"exact": {"ttl_s": 60}}}}}
    g = GatewayProc(cfg, tmp_path_factory.mktemp("gw"))
    yield g
    g.stop()


def predict(g: GatewayProc, path: str = "", headers: dict[str, str] | None = None,
            body: Any = BODY) -> tuple[int, dict[str, str], Any]:
    status, h, out = http("POST", f"{g.rest_url}/v1/models/half_plus_two{path}:predict", body,
                          headers)
    return status, h, json.loads(out)


def test_latest_version_is_resolved_at_the_gateway(gw: GatewayProc) -> None:
    status, h, out = predict(gw)
    assert status == 200 and out["predictions"] == V2
    assert h["x-infergate-version"] == "2"
    assert h["x-infergate-replica"] in {"r0", "r1"}
    assert h["x-infergate-cache"] in {"hit", "miss"}


def test_explicit_version_and_gateway_labels(gw: GatewayProc) -> None:
    assert predict(gw, "/versions/1")[2]["predictions"] == V1
    status, h, out = predict(gw, "/labels/stable")
    assert out["predictions"] == V1 and h["x-infergate-version"] == "1"
    assert predict(gw, "/labels/canary")[2]["predictions"] == V2


def test_label_to_unloaded_version_gives_tf_serving_not_found(gw: GatewayProc) -> None:
    status, _, out = predict(gw, "/labels/future")
    assert status == 404
    assert out == {"error": "Servable not found for request: Specific(half_plus_two, 7)"}


def test_unknown_model_and_version_answer_like_tf_serving(gw: GatewayProc, fleet: Fleet) -> None:
    for path in ["/v1/models/nope:predict", "/v1/models/half_plus_two/versions/9:predict",
                 "/v1/models/half_plus_two/labels/nolabel:predict", "/v1/nothing"]:
        direct = http("POST", fleet.replicas[0].rest_url + path, BODY)
        via = http("POST", gw.rest_url + path, BODY)
        assert (via[0], json.loads(via[2])) == (direct[0], json.loads(direct[2])), path


def test_cache_hit_is_byte_identical(gw: GatewayProc) -> None:
    body = {"instances": [7.0, 8.0]}
    s1, h1, o1 = http("POST", gw.rest_url + "/v1/models/half_plus_two/versions/1:predict", body)
    # Key order and whitespace do not matter: the canonical body is the key.
    raw = b'{ "instances" :[7.0,  8.0] }'
    s2, h2, o2 = http("POST", gw.rest_url + "/v1/models/half_plus_two/versions/1:predict", raw=raw)
    assert (s1, s2) == (200, 200)
    assert h1["x-infergate-cache"] == "miss" and h2["x-infergate-cache"] == "hit"
    assert o1 == o2
    s3, h3, _ = http("POST", gw.rest_url + "/v1/models/half_plus_two/versions/1:predict", body,
                     {"Cache-Control": "no-cache"})
    assert s3 == 200 and h3["x-infergate-cache"] == "miss"


def test_errors_are_not_cached(gw: GatewayProc) -> None:
    bad = {"instances": [[1.0, 2.0], [3.0]]}
    for _ in range(2):
        status, h, _ = http("POST", gw.rest_url + "/v1/models/half_plus_two:predict", bad)
        assert status == 400 and h["x-infergate-cache"] == "miss"


def test_metrics_and_admin_api(gw: GatewayProc) -> None:
    predict(gw)
    text = gw.metrics()
    assert 'infergate_requests_total{code="200",model="half_plus_two"' in text
    assert "infergate_replica_healthy" in text
    status, reps = gw.api("/api/replicas")
    assert status == 200 and {r["name"] for r in reps["replicas"]} == {"r0", "r1"}
    assert all(r["healthy"] for r in reps["replicas"])
    status, models = gw.api("/api/models")
    assert models["models"]["half_plus_two"]["latest"] == 2
    status, scale = gw.api("/api/scale")
    assert status == 200 and "default" in scale["pools"]


def test_oversized_body_gets_413(fleet: Fleet, gateway_factory: Any) -> None:
    g = gateway_factory({"replicas": fleet.replica_cfg(), "limits": {"max_body_bytes": 1000}})
    status, h, out = http("POST", g.rest_url + "/v1/models/half_plus_two:predict",
                          {"instances": [1.0] * 500})
    assert status == 413 and h["content-type"].startswith("application/json")
    assert "exceeds the limit of 1000 bytes" in json.loads(out)["error"]
    assert predict(g)[0] == 200  # and the gateway keeps serving


def test_unreachable_replica_is_skipped(fleet: Fleet, gateway_factory: Any) -> None:
    from tests.support.procs import free_port

    dead = {"name": "dead", "rest": f"127.0.0.1:{free_port()}", "grpc": f"127.0.0.1:{free_port()}"}
    g = gateway_factory({"replicas": [*fleet.replica_cfg(), dead],
                         "models": {"half_plus_two": {"balance": "round_robin"}}})
    for _ in range(10):
        status, h, _ = predict(g)
        assert status == 200 and h["x-infergate-replica"] != "dead"


def test_no_replica_at_all_is_503(gateway_factory: Any) -> None:
    from tests.support.procs import free_port

    dead = {"name": "dead", "rest": f"127.0.0.1:{free_port()}"}
    g = gateway_factory({"replicas": [dead]}, wait_ready=False)
    g.wait_ready = None  # type: ignore[assignment]
    import time

    for _ in range(100):
        try:
            status, _, out = http("POST", g.rest_url + "/v1/models/m:predict", BODY, timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    assert status == 503
    assert json.loads(out) == {"error": "No healthy replica is available"}
    assert http("GET", g.admin_url + "/readyz")[0] == 503
