"""The native gRPC engine (listen.engine: native) in a real gateway process in front of two real
replicas, driven by the official TF Serving stubs: every call answers as the replica answers it
directly (messages, codes, details), 10+ MB tensors both ways, the client's deadline, the
x-infergate metadata, and graceful drain on SIGTERM with a call in flight."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.integration.conftest import Fleet
from tests.integration.gwproc import EngineGateway

pytestmark = pytest.mark.integration

BIG = 64 << 20
OPTS = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]


def _floats(values: list[float]) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(
        size=len(values))])
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape)
    t.float_val.extend(values)
    return t


def predict(version: int | None = None, label: str | None = None, model: str = "half_plus_two",
            values: list[float] | None = None) -> predict_pb2.PredictRequest:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = model
    if version is not None:
        r.model_spec.version.value = version
    if label is not None:
        r.model_spec.version_label = label
    r.inputs["x"].CopyFrom(_floats(values or [1.0, 2.0, 5.0]))
    return r


@pytest.fixture(scope="module")
def gw(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineGateway]:
    cfg = {"replicas": fleet.replica_cfg(),
           "models": {"half_plus_two": {"labels": {"stable": 1, "canary": 2}}},
           "limits": {"drain_s": 10}}
    g = EngineGateway(cfg, tmp_path_factory.mktemp("native-grpc"), "native")
    yield g
    g.stop()


def _stubs(addr: str) -> tuple[grpc.Channel, Any, Any]:
    ch = grpc.insecure_channel(addr, options=OPTS)
    return (ch, prediction_service_pb2_grpc.PredictionServiceStub(ch),
            model_service_pb2_grpc.ModelServiceStub(ch))


def _outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except grpc.RpcError as err:
        return ("error", err.code(), err.details())  # type: ignore[attr-defined]


def test_official_stubs_behave_as_against_the_replica(gw: EngineGateway, fleet: Fleet) -> None:
    g_ch, g_pred, g_model = _stubs(gw.grpc_addr)
    r_ch, r_pred, r_model = _stubs(fleet.replicas[0].grpc_addr)
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.version.value = 1
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "half_plus_two"
    regress.model_spec.version.value = 1
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.example_list.examples.add().features.feature["x"].float_list.value.append(80.0)
    bad_signature = regression_pb2.RegressionRequest()
    bad_signature.CopyFrom(regress)
    bad_signature.model_spec.signature_name = "nope"
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name = "half_plus_two"
    task.model_spec.version.value = 1
    task.model_spec.signature_name = "regress_x_to_y2"
    multi.input.example_list.examples.add().features.feature["x"].float_list.value.append(10.0)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "half_plus_two"
    metadata.model_spec.version.value = 2
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_two"
    cases: list[tuple[str, Any, Any]] = [
        ("Predict", predict(version=2), None),
        ("Predict", predict(version=1), None),
        ("Predict", predict(version=9), None),
        ("Predict", predict(model="nope"), None),
        ("Predict", predict_pb2.PredictRequest(), None),
        ("Classify", classify, None),
        ("Regress", regress, None),
        ("Regress", bad_signature, None),
        ("MultiInference", multi, None),
        ("GetModelMetadata", metadata, None),
        ("GetModelStatus", status, "model"),
    ]
    for name, request, service in cases:
        g_stub, r_stub = (g_model, r_model) if service else (g_pred, r_pred)
        via = _outcome(lambda s=g_stub, n=name, q=request: getattr(s, n)(q, timeout=20))
        direct = _outcome(lambda s=r_stub, n=name, q=request: getattr(s, n)(q, timeout=20))
        assert via == direct, (name, request)
    g_ch.close()
    r_ch.close()


def test_gateway_labels_and_metadata(gw: EngineGateway) -> None:
    ch, pred, _ = _stubs(gw.grpc_addr)
    answer, call = pred.Predict.with_call(predict(label="stable"), timeout=20)
    assert list(answer.outputs["y"].float_val) == [2.5, 3.0, 4.5]
    md = dict(call.initial_metadata())
    assert md["x-infergate-version"] == "1" and md["x-infergate-replica"] in {"r0", "r1"}
    assert md["x-infergate-cache"] == "miss"
    ch.close()


def test_large_tensors_both_ways(gw: EngineGateway) -> None:
    ch, pred, _ = _stubs(gw.grpc_addr)
    values = [float(i % 1000) for i in range(3_000_000)]  # 12 MB of float32 in, 12 MB out
    answer = pred.Predict(predict(version=1, values=values), timeout=120)
    out = answer.outputs["y"].float_val
    assert len(out) == len(values) and out[999] == 0.5 * 999 + 2
    ch.close()


def test_deadline_is_enforced(gw: EngineGateway, fleet: Fleet) -> None:
    for r in fleet.replicas:
        r.set_knobs(latency_ms=1500)
    try:
        ch, pred, _ = _stubs(gw.grpc_addr)
        with pytest.raises(grpc.RpcError) as exc:
            pred.Predict(predict(version=1), timeout=0.4)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        ch.close()
    finally:
        for r in fleet.replicas:
            r.set_knobs(latency_ms=0)


def test_sigterm_drains_a_call_in_flight(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory
                                         ) -> None:
    cfg = {"replicas": fleet.replica_cfg(), "limits": {"drain_s": 10}}
    g = EngineGateway(cfg, tmp_path_factory.mktemp("drain"), "native")
    for r in fleet.replicas:
        r.set_knobs(latency_ms=1000)
    try:
        ch, pred, _ = _stubs(g.grpc_addr)
        result: dict[str, Any] = {}

        def slow() -> None:
            result["out"] = _outcome(lambda: pred.Predict(predict(version=1), timeout=30))

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        g.signal(signal.SIGTERM)
        t.join(30)
        assert result["out"][0] == "ok"
        assert list(result["out"][1].outputs["y"].float_val) == [2.5, 3.0, 4.5]
        assert g.proc.wait(30) == 0
        ch.close()
    finally:
        for r in fleet.replicas:
            r.set_knobs(latency_ms=0)
        g.stop()
