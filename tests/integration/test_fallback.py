"""The cost ladder's lower rungs against real replicas: a GPU-labelled pool and a CPU pool (two
replicas, the knobs make the GPU one fail), a fallback chain from one to the other, a stale
cache entry when nothing can answer, and a pool split that no longer leaks into other pools.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.integration.conftest import Fleet
from tests.integration.gwproc import GatewayProc, http

pytestmark = pytest.mark.integration

MODEL = "half_plus_two"
PREDICT = f"/v1/models/{MODEL}:predict"


def _cfg(fleet: Fleet, model: dict[str, Any]) -> dict[str, Any]:
    gpu, cpu = fleet.replicas[0], fleet.replicas[1]
    return {
        "replicas": [
            {"name": "gpu-0", "rest": f"127.0.0.1:{gpu.rest_port}",
             "grpc": f"127.0.0.1:{gpu.grpc_port}", "pool": "gpu"},
            {"name": "cpu-0", "rest": f"127.0.0.1:{cpu.rest_port}",
             "grpc": f"127.0.0.1:{cpu.grpc_port}", "pool": "cpu"},
        ],
        "models": {MODEL: model},
    }


@pytest.fixture
def knobs_reset(fleet: Fleet) -> Iterator[Fleet]:
    yield fleet
    for r in fleet.replicas:
        r.set_knobs(error_rate=0, latency_ms=0)


def _predict(g: GatewayProc, x: float = 1.0) -> tuple[int, dict[str, str], bytes]:
    return http("POST", g.rest_url + PREDICT, {"instances": [x]})


def test_fallback_chain_moves_to_the_cpu_pool(knobs_reset: Fleet, gateway_factory: Any) -> None:
    """The GPU pool fails (503 from its replica): every call is answered by the CPU pool,
    marked fallback:1 in REST headers and gRPC metadata, and counted; when the GPU replica
    recovers, answers are primary again."""
    fleet = knobs_reset
    g: GatewayProc = gateway_factory(_cfg(fleet, {
        "routes": [{"split": {"pool:gpu": 100}}],
        "fallback": [{"target": "pool:cpu", "on": ["unavailable", "overloaded", "timeout"]}]}))
    status, headers, _ = _predict(g)
    assert status == 200 and headers["x-infergate-tier"] == "primary"
    assert headers["x-infergate-replica"] == "gpu-0"
    fleet.replicas[0].set_knobs(error_rate=1.0)
    for i in range(30):
        status, headers, body = _predict(g, float(i))
        assert status == 200, body
        assert headers["x-infergate-tier"] == "fallback:1", headers
        assert headers["x-infergate-replica"] == "cpu-0"
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[1.0],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    with grpc.insecure_channel(g.grpc_addr) as ch:
        _, call = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict.with_call(
            req, timeout=10)
        md = dict(call.initial_metadata())
    assert md["x-infergate-tier"] == "fallback:1" and md["x-infergate-replica"] == "cpu-0"
    text = g.metrics()
    assert f'infergate_fallbacks_total{{model="{MODEL}",reason=' in text
    assert 'tier="fallback:1"' in text
    fleet.replicas[0].set_knobs(error_rate=0)
    end = time.monotonic() + 60
    while _predict(g)[1]["x-infergate-tier"] != "primary":  # ejection lifted by the probes
        assert time.monotonic() < end, "the GPU pool never served again"
        time.sleep(0.2)


def test_pool_split_without_fallback_fails_like_tf_serving(knobs_reset: Fleet,
                                                           gateway_factory: Any) -> None:
    """Without a fallback chain a pool target does not leak into another pool: with its one
    replica ejected, calls get UNAVAILABLE / 503 and the CPU replica serves none of them."""
    fleet = knobs_reset
    cfg = _cfg(fleet, {"routes": [{"split": {"pool:gpu": 100}}]})
    cfg["outlier"] = {"consecutive_errors": 2, "max_ejected_percent": 100}
    g: GatewayProc = gateway_factory(cfg)
    fleet.replicas[0].set_knobs(error_rate=1.0)
    statuses = [_predict(g)[0] for _ in range(10)]
    assert set(statuses) == {503}, statuses
    status, _, body = http("GET", g.admin_url + "/api/replicas")
    cpu = next(r for r in __import__("json").loads(body)["replicas"] if r["name"] == "cpu-0")
    assert cpu["requests"] == 0


def test_stale_answer_when_no_tier_can(knobs_reset: Fleet, gateway_factory: Any) -> None:
    """An answer cached with ttl_s 1 and stale_if_error_s 60: after its TTL, with every replica
    failing, the same request is answered from the expired entry (tier stale); a request never
    answered before gets the error."""
    fleet = knobs_reset
    g: GatewayProc = gateway_factory(_cfg(fleet, {
        "cache": {"exact": {"ttl_s": 1, "stale_if_error_s": 60}}}))
    status, headers, fresh = _predict(g, 7.0)
    assert status == 200 and headers["x-infergate-tier"] == "primary"
    time.sleep(1.2)
    for r in fleet.replicas:
        r.set_knobs(error_rate=1.0)
    status, headers, body = _predict(g, 7.0)
    assert status == 200, body
    assert headers["x-infergate-tier"] == "stale" and body == fresh
    status, headers, _ = _predict(g, 8.0)
    assert status == 503


def test_brownout_moves_sheddable_calls_first_and_recovers(knobs_reset: Fleet,
                                                           gateway_factory: Any) -> None:
    """The GPU pool saturates (its p95 passes the up threshold): the brownout level rises over
    window_up_s and sheddable calls move to the CPU pool (fallback:1) while critical ones stay;
    when the GPU pool is fast again the level falls over window_down_s and calls come back."""
    import json
    import threading

    fleet = knobs_reset
    cfg = _cfg(fleet, {"routes": [{"split": {"pool:gpu": 100}}],
                       "fallback": [{"target": "pool:cpu", "on": ["overloaded"]}],
                       "brownout": {"max_share": 0.5}})
    cfg["scale_eval_s"] = 0.25
    cfg["autoscale"] = {"gpu": {"min_replicas": 1, "window_up_s": 1.5, "window_down_s": 2,
                                "up": {"p95_latency_ms": 60}}}
    g: GatewayProc = gateway_factory(cfg)
    fleet.replicas[0].set_knobs(latency_ms=120)
    tiers: dict[str, list[str]] = {"sheddable": [], "critical": []}
    stop = threading.Event()

    def send(priority: str) -> None:
        while not stop.is_set():
            status, headers, _ = http("POST", g.rest_url + PREDICT, {"instances": [1.0]},
                                      headers={"x-priority": priority})
            assert status == 200
            tiers[priority].append(headers["x-infergate-tier"])

    threads = [threading.Thread(target=send, args=(p,), daemon=True)
               for p in ("sheddable", "critical") for _ in range(2)]
    for t in threads:
        t.start()
    levels = []
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            level = json.loads(http("GET", g.admin_url + "/api/scale")[2])["pools"]["gpu"]["brownout"]
            levels.append(level)
            if level >= 1.0 and tiers["sheddable"].count("fallback:1") >= 20:
                break
            time.sleep(0.1)
        assert max(levels) >= 1.0, levels[-10:]
        assert tiers["sheddable"].count("fallback:1") >= 20
        assert "fallback:1" not in tiers["critical"]
        fleet.replicas[0].set_knobs(latency_ms=0)
        end = time.monotonic() + 30
        while json.loads(http("GET", g.admin_url + "/api/scale")[2])["pools"]["gpu"]["brownout"]:
            assert time.monotonic() < end, "brownout never fell back to 0"
            time.sleep(0.1)
        n = len(tiers["sheddable"])
        time.sleep(1.0)
        assert set(tiers["sheddable"][n + 2:]) == {"primary"}
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    print(f"\n[drill] brownout: sheddable calls moved {tiers['sheddable'].count('fallback:1')} of "
          f"{len(tiers['sheddable'])}, critical moved {tiers['critical'].count('fallback:1')} of "
          f"{len(tiers['critical'])}")
