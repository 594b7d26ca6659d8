"""Payload logging and `infergate replay` end to end, against real replicas and real gateways.

- A gateway routes half_plus_two to version 1 and logs every call (a tiny rotate size, so the
  log is mostly gzipped rotations); the records hold the calls (gRPC as base64 of the exact
  message) and never a redacted header.
- `infergate replay` (the real command, a subprocess) sends the log to the same gateway: the
  answers agree, exit 0; to a replica directly, whose latest version 2 answers 0.5 x + 3: they
  disagree, exit 1; an impossible latency limit fails too.
- With a writer made slow (the `slow_write_ms` test knob, 100 ms a record) and a queue of 4,
  calls are as fast as through a gateway without a payload log, and the records that did not
  fit are counted as dropped.
"""

from __future__ import annotations

import gzip
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from tests.integration.gwproc import ROOT, GatewayProc, http
from tests.integration.test_routing_support import Req, fire, metric, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "half_plus_two"
PREDICT = f"/v1/models/{MODEL}:predict"
ONE = {MODEL: {"labels": {"one": 1, "two": 2}, "routes": [{"split": {"one": 100}}]}}
SECRETS = {"Authorization": "Bearer sekrit-token-1", "Cookie": "session=sekrit-cookie-2",
           "X-Api-Key": "sekrit-key-3"}


def grpc_request(x: float) -> bytes:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[x],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    return bytes(req.SerializeToString())


def grpc_send(addr: str, messages: list[bytes], metadata: tuple[tuple[str, str], ...]) -> None:
    import grpc

    with grpc.insecure_channel(addr) as ch:
        predict = ch.unary_unary("/tensorflow.serving.PredictionService/Predict")
        for m in messages:
            predict(m, timeout=10, metadata=metadata)


def replay(*args: str) -> tuple[int, str]:
    res = subprocess.run([sys.executable, "-m", "gateway.commands.cli", "replay", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    return res.returncode, res.stdout + res.stderr


def all_log_bytes(folder: Path) -> bytes:
    return b"".join(gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
                    for p in sorted(folder.iterdir()))


def test_a_logged_call_replays_against_a_candidate(fleet: Fleet, gateway_factory: Any,
                                                   tmp_path: Path) -> None:
    log = tmp_path / "log" / "payload.jsonl"
    g: GatewayProc = gateway_factory({
        "replicas": fleet.replica_cfg(), "models": ONE,
        "payload_log": {"path": str(log), "sample_ratio": 1.0, "rotate_mb": 0.004, "keep": 0}})
    xs = [float(i) for i in range(30)]
    for x in xs:
        status, _, out = http("POST", g.rest_url + PREDICT, {"instances": [x]},
                              {**SECRETS, "X-Client": "nightly"})
        assert status == 200 and json.loads(out)["predictions"] == [0.5 * x + 2]
    grpc_msgs = [grpc_request(x) for x in xs[:10]]
    grpc_send(g.grpc_addr, grpc_msgs, (("authorization", "Bearer sekrit-token-1"),
                                       ("x-client", "nightly")))
    wait_until(lambda: metric(g.metrics(), "infergate_payload_log_records_total") >= 40, 10,
               "40 records written")

    # The file: rotations (gzip), every call, no secret anywhere.
    assert any(p.name.endswith(".gz") for p in log.parent.iterdir())
    raw = all_log_bytes(log.parent)
    assert b"sekrit" not in raw
    from gateway.observe.logfile import read_log
    from gateway.observe.records import body_of

    records = list(read_log(log))
    assert len(records) == 40
    rest = [r for r in records if r["protocol"] == "rest"]
    assert [json.loads(r["request"]["body"])["instances"] for r in rest] == [[x] for x in xs]
    first = rest[0]
    assert (first["model"], first["version"], first["arm"], first["status"], first["method"],
            first["tenant"], first["cache"], first["tier"]) == (
        MODEL, 1, "one", 200, "predict", None, "miss", "primary")
    assert first["replica"] in {"r0", "r1"} and first["latency_ms"] > 0
    assert first["request"]["headers"]["x-client"] == "nightly"
    assert json.loads(first["answer"]["body"]) == {"predictions": [2.0]}
    grpc_recs = [r for r in records if r["protocol"] == "grpc"]
    assert [body_of(r["request"]) for r in grpc_recs] == grpc_msgs
    assert grpc_recs[0]["request"]["metadata"] == {"x-client": "nightly"}
    assert grpc_recs[0]["status"] == 0 and grpc_recs[0]["answer"]["body_b64"]

    # The same gateway as the candidate: everything agrees.
    report = tmp_path / "same.json"
    rc, out = replay(str(log), "--target", g.rest_url, "--grpc", g.grpc_addr, "--rate", "200",
                     "--compare", "--max-disagreement", "0", "--max-latency-ratio", "100",
                     "--json", str(report), "--no-progress")
    assert rc == 0, out
    doc = json.loads(report.read_text())
    assert (doc["records"], doc["sent"], doc["compared"], doc["disagreed"]) == (40, 40, 40, 0)
    assert doc["passed"] and doc["status_changes"] == {} and "PASS" in out

    # A replica of the other version (latest: 2, half_plus_three's math): they disagree.
    r0 = fleet.replicas[0]
    report = tmp_path / "other.json"
    rc, out = replay(str(log), "--target", r0.rest_url, "--grpc", r0.grpc_addr, "--rate", "200",
                     "--max-disagreement", "0.1", "--json", str(report), "--no-progress")
    assert rc == 1, out
    doc = json.loads(report.read_text())
    assert doc["disagreement"] == 1.0 and not doc["passed"] and "FAIL" in out
    example = doc["examples"][0]  # a REST one (they were logged first): 0.5 x + 3 vs + 2
    assert (json.loads(example["replayed"])["predictions"][0]
            - json.loads(example["logged"])["predictions"][0]) == 1.0
    assert any("disagreement" in f for f in doc["failures"])

    # A latency limit nothing can meet.
    rc, out = replay(str(log), "--target", g.rest_url, "--limit", "5", "--max-latency-ratio",
                     "0.001", "--no-progress")
    assert rc == 1 and "latency ratio" in out, out


def test_a_slow_payload_log_never_slows_calls(fleet: Fleet, gateway_factory: Any,
                                               tmp_path: Path) -> None:
    plain: GatewayProc = gateway_factory({"replicas": fleet.replica_cfg(), "models": ONE},
                                         name="plain")
    slow: GatewayProc = gateway_factory({
        "replicas": fleet.replica_cfg(), "models": ONE,
        "payload_log": {"path": str(tmp_path / "slow" / "p.jsonl"), "sample_ratio": 1.0,
                        "queue": 4, "slow_write_ms": 100}}, name="slow")
    reqs = [Req(body=json.dumps({"instances": [float(i)]}).encode()) for i in range(150)]
    fire(plain.rest_url, reqs[:20], concurrency=4)  # warm both up
    fire(slow.rest_url, reqs[:20], concurrency=4)
    times: dict[str, list[float]] = {"plain": [], "slow": []}
    for _ in range(2):  # interleaved batches: the same machine state for both
        for name, g in (("plain", plain), ("slow", slow)):
            results = fire(g.rest_url, reqs, concurrency=4)
            assert all(r.status == 200 for r in results)
            times[name] += [r.ended - r.started for r in results]
    p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"median latency ms: {p50}")
    # Had a call waited for its record, the median would be >= 100 ms (one write).
    assert p50["slow"] < 30.0 and p50["slow"] < p50["plain"] * 1.5 + 5.0, p50
    sent = 20 + 2 * len(reqs)

    def settled() -> tuple[float, float] | None:
        text = slow.metrics()
        written = metric(text, "infergate_payload_log_records_total")
        dropped = metric(text, "infergate_payload_log_dropped_total")
        return (written, dropped) if written + dropped >= sent else None

    written, dropped = wait_until(settled, 10, "every call written or dropped")
    assert dropped > sent / 2 and written + dropped == sent
    assert "infergate_payload_log_dropped_total" in slow.metrics()
    lines = (tmp_path / "slow" / "p.jsonl").read_bytes().count(b"\n")
    assert lines == written
