"""gateway.observe on its own: trace headers on a try's copy of a call, payload records
(redaction, text and base64 bodies, truncation), the rotating log and its reader, the writer
that drops instead of waiting, the replay verdicts, and the plain paths when both are off."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.commands.replay_report import Outcome, summarize
from gateway.config import GatewayConfig, PayloadLog, Tracing
from gateway.core.call import Answer, Call
from gateway.core.errors import NoReplica
from gateway.core.metrics import Metrics
from gateway.core.wire import RestRequest
from gateway.observe import PayloadLog as PayloadWriter
from gateway.observe.logfile import RotatingLog, read_log, rotations
from gateway.observe.records import Sample, body_of, encode
from gateway.observe.tracing import with_trace_headers
from gateway.transport.compat.upstream import GrpcMethod
from gateway.transport.ingress import Ingress
from gateway.transport.native_grpc.modelspec import GrpcPath

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MINE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"}


def rest_call(headers: dict[str, str] | None = None, body: bytes = b'{"instances": [1.0]}') -> Call:
    return Call("rest", "predict", "m", None, None, "", headers or {}, body, None,
                RestRequest("POST", "/v1/models/m:predict", "", None))


# ---- trace headers ---------------------------------------------------------------------------

def test_a_try_sends_its_own_traceparent_and_the_call_is_untouched() -> None:
    call = rest_call({"traceparent": PARENT, "tracestate": "a=1", "x-priority": "critical"})
    tried = with_trace_headers(call, MINE)
    assert dict(tried.headers) == {"x-priority": "critical", **MINE}
    assert call.headers["traceparent"] == PARENT and "tracestate" in call.headers
    assert tried.extra is call.extra  # REST: the request line is shared


@pytest.mark.parametrize("engine", ["native", "compat"])
def test_grpc_metadata_as_received_carries_the_try_traceparent(engine: str) -> None:
    received = (("x-a", "1"), ("traceparent", PARENT), ("x-b", "2"))
    path: Any
    if engine == "native":
        path = GrpcPath("/tensorflow.serving.PredictionService/Predict")
        path.body, path.spec_end, path.wire_metadata = b"x", 3, received
    else:
        path = GrpcMethod.of("/tensorflow.serving.PredictionService/Predict", received)
    call = Call("grpc", "predict", "m", None, None, "", dict(received), b"x", None, path)
    tried = with_trace_headers(call, MINE)
    attr = "wire_metadata" if engine == "native" else "metadata"
    assert getattr(tried.extra, attr) == (("x-a", "1"), ("x-b", "2"), *MINE.items())
    assert getattr(call.extra, attr) == received  # the original is not changed
    assert str(tried.extra) == str(path) and type(tried.extra) is type(path)
    if engine == "native":
        assert tried.extra.body is path.body and tried.extra.spec_end == 3


# ---- sampling: an untraced call never reaches OpenTelemetry ----------------------------------

@pytest.mark.parametrize(("traceparent", "draw", "traced"), [
    (None, 0.30, False),  # no client trace: the gateway's draw against sample_ratio 0.25
    (None, 0.20, True),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 0.99, True),  # sampled parent
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", 0.00, False),  # not sampled
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", 0.99, False),  # invalid: a draw
    ("garbage", 0.20, True),
])
def test_which_calls_are_traced(traceparent: str | None, draw: float, traced: bool) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the `tracing` extra is not installed")
    from opentelemetry import context, trace

    from gateway.observe.tracing import Tracer

    tracer = Tracer(Tracing(otlp_endpoint="http://127.0.0.1:9", sample_ratio=0.25))
    tracer._random = lambda: draw  # the draw, fixed
    started = tracer.start_call(rest_call({} if traceparent is None else
                                          {"traceparent": traceparent}))
    try:
        assert (started is not None) is traced
        if started is not None:
            span, token = started
            assert span.is_recording() and trace.get_current_span() is span
            if traceparent is not None and traceparent.startswith("00-0af7"):  # continued
                assert format(span.get_span_context().trace_id, "032x") == traceparent[3:35]
            context.detach(token[0])  # not ended: nothing is exported
        else:
            assert not trace.get_current_span().is_recording()
    finally:
        tracer.provider.shutdown()


# ---- both off: the plain paths ---------------------------------------------------------------

def test_without_an_observer_the_ingress_keeps_its_own_answer() -> None:
    ing = Ingress(None, "rest", None, Metrics())  # type: ignore[arg-type]
    assert "answer" not in vars(ing)
    cfg = GatewayConfig()
    assert cfg.tracing is None and cfg.payload_log is None


def test_config_keys() -> None:
    cfg = GatewayConfig.model_validate({
        "tracing": {"otlp_endpoint": "http://collector:4318/", "protocol": "grpc"},
        "payload_log": {"path": "/tmp/p.jsonl", "redact": ["X-Secret"]}})
    assert cfg.tracing == Tracing(otlp_endpoint="http://collector:4318", protocol="grpc")
    assert cfg.payload_log is not None and cfg.payload_log.redact == ["x-secret"]
    assert PayloadLog(path="p").redact == ["authorization", "cookie", "x-api-key"]
    with pytest.raises(ValueError, match="base URL"):
        Tracing(otlp_endpoint="collector:4318")


# ---- records ---------------------------------------------------------------------------------

def _sample(call: Call, result: Answer | NoReplica) -> Sample:
    return Sample(time.time(), 0.0123, call, dict(call.headers), result)


def test_a_rest_record_keeps_the_call_and_never_a_redacted_header() -> None:
    call = rest_call({"authorization": "Bearer s3cret", "cookie": "c", "x-api-key": "k",
                      "x-client": "batch", "content-type": "application/json", "host": "gw"})
    answer = Answer(200, b'{"predictions": [2.5]}', [("content-type", "application/json")],
                    replica="r0", version=1, arm="stable")
    rec = json.loads(encode(_sample(call, answer), 1000,
                            frozenset({"authorization", "cookie", "x-api-key"})))
    assert rec["request"] == {"http_method": "POST", "path": "/v1/models/m:predict",
                              "headers": {"x-client": "batch", "content-type": "application/json"},
                              "body": '{"instances": [1.0]}'}
    assert rec["answer"]["body"] == '{"predictions": [2.5]}' and rec["status"] == 200
    assert (rec["model"], rec["version"], rec["arm"], rec["replica"], rec["tenant"]) == (
        "m", 1, "stable", "r0", None)
    assert rec["latency_ms"] == 12.3
    assert b"s3cret" not in encode(_sample(call, answer), 1000, frozenset({"authorization"}))


def test_grpc_bodies_are_base64_and_long_ones_are_cut() -> None:
    msg = bytes(range(256)) * 4
    call = Call("grpc", "predict", "m", None, None, "", {"x-a": "1", "te": "trailers"}, msg,
                None, "/tensorflow.serving.PredictionService/Predict")
    rec = json.loads(encode(_sample(call, Answer(0, b"\x01\x02")), 100, frozenset()))
    assert rec["request"]["path"] == "/tensorflow.serving.PredictionService/Predict"
    assert rec["request"]["metadata"] == {"x-a": "1"}
    assert rec["request"]["truncated"] is True and body_of(rec["request"]) == msg[:100]
    assert body_of(rec["answer"]) == b"\x01\x02"
    err = json.loads(encode(_sample(call, NoReplica("No replica answered")), 100, frozenset()))
    assert err["status"] == 14 and err["answer"] == {"status": 14, "error": "No replica answered"}
    assert base64.b64decode(rec["request"]["body_b64"]) == msg[:100]


# ---- the file --------------------------------------------------------------------------------

def test_rotation_gzips_keeps_the_newest_and_the_reader_keeps_the_order(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    f = RotatingLog(path, limit=15, keep=3)
    for i in range(10):
        f.write(json.dumps({"i": i}).encode() + b"\n")  # 9 bytes: a rotation every 2 lines
        f.flush()
    f.close()
    rots = rotations(path)
    assert [p.name for p in rots] == ["payload.jsonl.3.gz", "payload.jsonl.4.gz",
                                      "payload.jsonl.5.gz"]
    assert not path.exists()  # the last flush rotated it
    seen = [r["i"] for r in read_log(path)]
    assert seen == [4, 5, 6, 7, 8, 9]  # the oldest rotations are gone, the order is kept
    assert gzip.decompress(rots[-1].read_bytes()).startswith(b'{"i":')
    with path.open("ab") as cut:
        cut.write(b'{"i": 10')  # a crash mid-line
    assert [r["i"] for r in read_log(path)] == seen


def test_a_slow_writer_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    metrics = Metrics()
    cfg = PayloadLog(path=str(tmp_path / "p.jsonl"), sample_ratio=1.0, queue=5,
                     slow_write_ms=20.0)
    writer = PayloadWriter(cfg, metrics, random.Random(1))

    async def run() -> float:
        task = asyncio.get_running_loop().create_task(writer.run())
        t0 = time.perf_counter()
        worst = 0.0
        for i in range(200):
            s = time.perf_counter()
            writer.record(rest_call(body=b'{"instances": [%d]}' % i), Answer(200, b"{}"),
                          time.monotonic())
            worst = max(worst, time.perf_counter() - s)
            await asyncio.sleep(0.001)
        assert time.perf_counter() - t0 < 2.0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return worst

    worst = asyncio.run(run())
    assert worst < 0.005  # a record is a put_nowait, whatever the disk does
    written = metrics.payload_logged._value.get()
    dropped = metrics.payload_dropped._value.get()
    assert dropped > 100 and written + dropped == 200
    assert len(list(read_log(tmp_path / "p.jsonl"))) == written  # queued ones flushed at close


def test_sampling_and_the_models_filter(tmp_path: Path) -> None:
    cfg = PayloadLog(path=str(tmp_path / "p.jsonl"), sample_ratio=0.25, models=["m"])
    writer = PayloadWriter(cfg, Metrics(), random.Random(7))

    async def run() -> int:
        for _ in range(2000):
            writer.record(rest_call(), Answer(200, b"{}"), time.monotonic())
        other = rest_call()
        other.model = "other"
        writer.record(other, Answer(200, b"{}"), time.monotonic())
        status = Call("rest", "status", "m", None, None, "", {}, b"", None, None)
        writer.record(status, Answer(200, b"{}"), time.monotonic())
        return writer.queue.qsize()

    queued = asyncio.run(run())
    assert 400 < queued < 600


# ---- replay verdicts -------------------------------------------------------------------------

def _outcome(agreed: bool | None, status: int = 200, ms: float = 2.0) -> Outcome:
    return Outcome(1, "rest", "m", 200, status, 1.0, ms, agreed=agreed)


def test_replay_verdicts() -> None:
    same = [_outcome(True) for _ in range(9)] + [_outcome(False)]
    r = summarize(same, {"truncated": 2}, 0.2, 3.0, True)
    assert r["passed"] and r["disagreement"] == pytest.approx(0.1) and r["records"] == 12
    assert r["latency_ratio"] == pytest.approx(2.0)
    assert not summarize(same, {}, 0.05, None, True)["passed"]
    assert not summarize(same, {}, None, 1.5, True)["passed"]
    failing = [_outcome(False, status=503) for _ in range(5)]
    r = summarize(failing, {}, 0.5, None, True)
    assert not r["passed"] and r["status_changes"] == {"200->503": 5}
    assert summarize(same, {}, None, None, False)["passed"]  # no limit given: no failure


class _Dispatcher:
    def __init__(self) -> None:
        self.traced: list[object] = []

    def trace(self, tracer: object) -> None:
        self.traced.append(tracer)


def test_both_off_wires_nothing_and_a_missing_extra_serves_without_traces(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from gateway.app.observability import Observability
    from gateway.observe import tracing

    d = _Dispatcher()
    off = Observability(GatewayConfig(), Metrics(), d)  # type: ignore[arg-type]
    assert off.observer is None and off.start() == [] and d.traced == []
    assert "answer" not in vars(off.ingress(None, "rest", None))  # type: ignore[arg-type]

    def missing(cfg: Tracing) -> None:
        raise ImportError("No module named 'opentelemetry'")

    monkeypatch.setattr(tracing, "_load_otel", missing)
    cfg = GatewayConfig.model_validate({"tracing": {"otlp_endpoint": "http://127.0.0.1:1"}})
    no_extra = Observability(cfg, Metrics(), d)  # type: ignore[arg-type]
    assert no_extra.tracer is None and no_extra.observer is None and d.traced == []
    assert "pip install 'infergate[tracing]'" in caplog.text


def test_a_reload_that_changes_them_is_refused() -> None:
    from gateway.app.reload_rules import check_static

    old = GatewayConfig.model_validate({"payload_log": {"path": "/tmp/p.jsonl"}})
    check_static(old, GatewayConfig.model_validate({"payload_log": {"path": "/tmp/p.jsonl"}}))
    with pytest.raises(ValueError, match="tracing, payload_log"):
        check_static(old, GatewayConfig.model_validate({"payload_log": {"path": "/tmp/q.jsonl"}}))
    with pytest.raises(ValueError, match="tracing, payload_log"):
        check_static(old, old.model_copy(update={"tracing": Tracing(otlp_endpoint="http://c")}))
