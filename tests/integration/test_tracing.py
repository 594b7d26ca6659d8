"""Tracing end to end: a real gateway (both engines) in front of two real replicas sends its
spans to a real OTLP receiver process (tests/support/otlp.py; the native engine over
OTLP/HTTP, the compat one over OTLP/gRPC).

REST and gRPC calls, with and without a client traceparent, and a call retried on the other
replica (replica r0's error knob at 100 %): the gateway's server span continues the client's
trace (or starts one), every try is a client span under it (the retry and the shadow copy are
tries of their own), the attributes say model, version, label, arm, replica, cache, tier,
status and sizes, and the replica receives the try's own traceparent, never the client's:
replica r0 is reached through a TCP tap (tests/support/tap.py) that keeps what the gateway sent
(HTTP/1.1 text; HTTP/2 header blocks decoded with hpack).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from tests.integration.gwproc import EngineGateway, http
from tests.integration.test_routing_support import wait_until
from tests.support.otlp import OtlpReceiver
from tests.support.tap import Tap

pytest.importorskip("opentelemetry.sdk", reason="the `tracing` extra is not installed")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MODEL = "half_plus_two"
PREDICT = f"/v1/models/{MODEL}:predict"
MODEL_CFG = {"labels": {"one": 1, "two": 2}, "routes": [{"split": {"one": 100}}],
             "shadow": {"target": "two", "percent": 100}}


def grpc_predict(addr: str, x: float, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """A Predict through the gateway; its initial metadata."""
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[x],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    with grpc.insecure_channel(addr) as ch:
        reply, call = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict.with_call(
            req, timeout=10, metadata=metadata)
    assert list(reply.outputs["y"].float_val) == [0.5 * x + 2]
    return dict(call.initial_metadata())


def new_parent() -> tuple[str, str, str]:
    """(trace id, parent span id, traceparent) of a sampled client trace."""
    tid, sid = secrets.token_hex(16), secrets.token_hex(8)
    return tid, sid, f"00-{tid}-{sid}-01"


@pytest.fixture
def knobs_reset(fleet: Fleet) -> Iterator[Fleet]:
    yield fleet
    for r in fleet.replicas:
        r.set_knobs(error_rate=0, latency_ms=0)


class Traced:
    """The gateway under test, its receiver and the taps in front of replica r0."""

    def __init__(self, fleet: Fleet, workdir: Path, engine: str, protocol: str,
                 model_cfg: dict[str, Any] | None = None) -> None:
        model_cfg = MODEL_CFG if model_cfg is None else model_cfg
        self.shadowed = "shadow" in model_cfg
        self.receiver = OtlpReceiver(workdir / "otlp")
        r0, r1 = fleet.replicas
        self.rest_tap = Tap(("127.0.0.1", r0.rest_port))
        self.grpc_tap = Tap(("127.0.0.1", r0.grpc_port))
        endpoint = self.receiver.http_endpoint if protocol == "http" else self.receiver.grpc_endpoint
        cfg = {"replicas": [{"name": "r0", "rest": self.rest_tap.addr, "grpc": self.grpc_tap.addr},
                            {"name": "r1", "rest": f"127.0.0.1:{r1.rest_port}",
                             "grpc": f"127.0.0.1:{r1.grpc_port}"}],
               "models": {MODEL: model_cfg},
               "tracing": {"otlp_endpoint": endpoint, "protocol": protocol, "sample_ratio": 1.0}}
        self.gw = EngineGateway(cfg, workdir / "gw", engine)
        wait_until(self._both_up, 20, "both replicas healthy with versions 1 and 2")

    def _both_up(self) -> bool:
        _, doc = self.gw.api("/api/replicas")
        return sum(1 for r in doc["replicas"] if r["healthy"]
                   and {"1", "2"} <= set(r["models"].get(MODEL, {}))) == 2

    def close(self) -> None:
        self.gw.stop()
        self.rest_tap.close()
        self.grpc_tap.close()
        self.receiver.stop()

    def trace(self, tid: str, tries: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The server span of trace `tid` and its client spans, once the server span and at
        least `tries` primary tries and the shadow copy have arrived."""
        def ready(spans: list[dict[str, Any]]) -> bool:
            mine = [s for s in spans if s["trace_id"] == tid]
            kids = [s for s in mine if s["kind"] == "CLIENT"]
            return (any(s["kind"] == "SERVER" for s in mine)
                    and sum(1 for s in kids if s["attributes"]["infergate.version"] == 1) >= tries
                    and (not self.shadowed
                         or any(s["attributes"]["infergate.version"] == 2 for s in kids)))

        spans = [s for s in self.receiver.wait_for(ready) if s["trace_id"] == tid]
        (server,) = [s for s in spans if s["kind"] == "SERVER"]
        kids = [s for s in spans if s["kind"] == "CLIENT"]
        assert all(k["parent_span_id"] == server["span_id"] for k in kids), spans
        return server, kids


@pytest.fixture(params=[("native", "http"), ("compat", "grpc")], ids=["native-otlp-http",
                                                                      "compat-otlp-grpc"])
def traced(request: pytest.FixtureRequest, knobs_reset: Fleet, tmp_path: Path) -> Iterator[Traced]:
    engine, protocol = request.param
    t = Traced(knobs_reset, tmp_path, engine, protocol)
    try:
        yield t
    finally:
        t.close()


def _check_server(server: dict[str, Any], protocol: str, replica: str) -> None:
    a = server["attributes"]
    assert server["name"] == f"{protocol} predict" and server["service"] == "infergate"
    assert (a["infergate.protocol"], a["infergate.model"], a["infergate.version"],
            a["infergate.arm"], a["infergate.replica"], a["infergate.cache"],
            a["infergate.tier"], a["infergate.label"]) == (
        protocol, MODEL, 1, "one", replica, "miss", "primary", "")
    assert a["infergate.status"] == (200 if protocol == "rest" else 0)
    assert a["infergate.request.size"] > 0 and a["infergate.response.size"] > 0


def _primary(kids: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((k for k in kids if k["attributes"]["infergate.version"] == 1),
                  key=lambda k: k["start_ns"])


def test_calls_continue_or_start_traces_and_tries_are_child_spans(traced: Traced) -> None:
    g = traced.gw
    calls: list[tuple[str, str | None, str | None, str]] = []  # protocol, tid, parent, replica
    for i in range(4):  # round robin (shadow copies take turns too): some reach the tapped r0
        tid, sid, parent = new_parent()
        status, headers, _ = http("POST", g.rest_url + PREDICT, {"instances": [float(i)]},
                                  {"traceparent": parent, "tracestate": "client=1"})
        assert status == 200
        calls.append(("rest", tid, sid, headers["x-infergate-replica"]))
        tid, sid, parent = new_parent()
        md = grpc_predict(g.grpc_addr, float(i), (("traceparent", parent),))
        calls.append(("grpc", tid, sid, md["x-infergate-replica"]))
    for i in range(2):  # no client trace: the gateway starts one (sample_ratio 1)
        assert http("POST", g.rest_url + PREDICT, {"instances": [9.0 + i]})[0] == 200
        grpc_predict(g.grpc_addr, 9.0 + i)

    for protocol, tid, sid, replica in calls:
        assert tid is not None
        server, kids = traced.trace(tid)
        assert server["parent_span_id"] == sid  # the client's trace, continued
        _check_server(server, protocol, replica)
        (primary,) = _primary(kids)
        a = primary["attributes"]
        assert primary["name"] == "upstream predict" and a["infergate.try"] == "first"
        assert [k["attributes"]["infergate.try"] for k in kids
                if k["attributes"]["infergate.version"] == 2] == ["shadow"]
        assert (a["infergate.replica"], a["infergate.model"], a["infergate.status"]) == (
            replica, MODEL, 200 if protocol == "rest" else 0)
        assert a["infergate.request.size"] > 0 and a["infergate.response.size"] > 0
        if replica != "r0":
            continue
        # The replica got the try's own span as its parent, never the client's.
        mine = f"00-{tid}-{primary['span_id']}-01"
        if protocol == "rest":
            forwarded_rest = traced.rest_tap.http1_text()  # sent before the replica answered
            assert re.search(rf"(?i)traceparent: {mine}\r\n", forwarded_rest), forwarded_rest[-2000:]
            assert "tracestate: client=1" in forwarded_rest.lower()
        else:
            blocks = [b for b in traced.grpc_tap.h2_header_blocks() if tid in b.get("traceparent", "")]
            assert mine in {b["traceparent"] for b in blocks}, blocks
        assert sid not in traced.rest_tap.http1_text()
        assert all(sid not in b.get("traceparent", "") for b in traced.grpc_tap.h2_header_blocks())
    assert {("rest", "r0"), ("grpc", "r0")} <= {(p, r) for p, _, _, r in calls}  # both checked

    roots = traced.receiver.wait_for(lambda spans: sum(
        1 for s in spans if s["kind"] == "SERVER" and not s["parent_span_id"]) >= 4)
    started = [s for s in roots if s["kind"] == "SERVER" and not s["parent_span_id"]]
    assert sorted(s["attributes"]["infergate.protocol"] for s in started) == [
        "grpc", "grpc", "rest", "rest"]
    for root in started:
        kids = [s for s in roots if s["parent_span_id"] == root["span_id"]]
        assert kids and all(k["trace_id"] == root["trace_id"] and k["kind"] == "CLIENT"
                            for k in kids)


def _a_call_tried_twice(traced: Traced, calls: int
                        ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """Up to `calls` REST calls, each answered by r1: the server span and the two primary try
    spans of the first one that made two tries (r0's, then r1's), or None."""
    for i in range(calls):
        tid, _, parent = new_parent()
        status, headers, _ = http("POST", traced.gw.rest_url + PREDICT, {"instances": [float(i)]},
                                  {"traceparent": parent})
        assert status == 200 and headers["x-infergate-replica"] == "r1"
        server, kids = traced.trace(tid)
        if len(_primary(kids)) >= 2:
            return server, _primary(kids)
    return None


def test_a_retry_is_a_second_try_span_in_the_same_trace(traced: Traced,
                                                        knobs_reset: Fleet) -> None:
    knobs_reset.replicas[0].set_knobs(error_rate=1.0)
    found = _a_call_tried_twice(traced, 12)
    assert found is not None, "no call was retried"
    server, (first, second) = found
    assert first["attributes"]["infergate.replica"] == "r0"
    assert first["attributes"]["infergate.status"] == 503 and first["status"] == "ERROR"
    assert second["attributes"]["infergate.replica"] == "r1"
    assert second["attributes"]["infergate.status"] == 200 and second["status"] != "ERROR"
    assert (first["attributes"]["infergate.try"], second["attributes"]["infergate.try"]) == (
        "first", "retry")
    assert server["attributes"]["infergate.replica"] == "r1" and server["status"] != "ERROR"
    assert first["span_id"] != second["span_id"]


def test_a_hedge_is_a_try_span_and_its_cancelled_loser_is_no_error(knobs_reset: Fleet,
                                                                   tmp_path: Path) -> None:
    """r0 answers in 300 ms, the hedge leaves after 30 ms (round robin: every other call starts
    on r0). The call's trace holds both copies: r0's first try, cancelled when r1's hedge
    answered (marked cancelled, not an error), and the hedge on r1 that answered."""
    knobs_reset.replicas[0].set_knobs(latency_ms=300)
    t = Traced(knobs_reset, tmp_path, "native", "http",
               {"labels": {"one": 1}, "routes": [{"split": {"one": 100}}],
                "balance": "round_robin", "hedge": {"delay_ms": 30, "budget_ratio": 1.0}})
    try:
        found = _a_call_tried_twice(t, 6)
        assert found is not None, "no call was hedged"
        server, (first, hedge) = found
        a, b = first["attributes"], hedge["attributes"]
        assert (a["infergate.replica"], a["infergate.try"], a["infergate.cancelled"]) == (
            "r0", "first", True)
        assert first["status"] != "ERROR" and "infergate.status" not in a
        assert (b["infergate.replica"], b["infergate.try"], b["infergate.status"]) == (
            "r1", "hedge", 200)
        assert hedge["start_ns"] - first["start_ns"] >= 25_000_000  # sent after the delay
        assert first["end_ns"] >= hedge["end_ns"] - 5_000_000  # cancelled as the hedge won
        assert server["attributes"]["infergate.replica"] == "r1" and server["status"] != "ERROR"
    finally:
        t.close()


def test_spans_still_waiting_are_sent_when_the_gateway_stops(traced: Traced) -> None:
    """The exporter sends in batches (every 5 s); closing flushes what is waiting, so the spans
    are at the receiver when the process has exited."""
    tid, _, parent = new_parent()
    assert http("POST", traced.gw.rest_url + PREDICT, {"instances": [1.0]},
                {"traceparent": parent})[0] == 200
    assert traced.gw.stop() == 0
    traced.receiver.wait_for(lambda spans: any(s["trace_id"] == tid and s["kind"] == "SERVER"
                                               for s in spans), timeout=1.0)
    log = traced.gw.log()
    assert "died" not in log and "Traceback" not in log, log[-3000:]
