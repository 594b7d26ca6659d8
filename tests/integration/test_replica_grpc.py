"""The replica's gRPC surface (official tensorflow_serving stubs), its test knobs and its metrics.

A real replica process serves half_plus_two v1/v2 (labels stable=1, canary=2) and embed; calls go
through PredictionService and ModelService exactly as TF Serving clients make them.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

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

from tests.support.models import write_model_config
from tests.support.procs import ReplicaProc, http_get, http_post, start_replica

pytestmark = pytest.mark.integration

V1_PREDICTIONS = b'{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'
V2_PREDICTIONS = b'{\n    "predictions": [3.5, 4.0, 5.5\n    ]\n}'
INSTANCES = {"instances": [1.0, 2.0, 5.0]}


@pytest.fixture(scope="module")
def replica(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProc]:
    config = write_model_config(tmp_path_factory.mktemp("replica") / "models.config", models_dir)
    proc = start_replica(config, extra_args=["--allow_version_labels_for_unavailable_models"])
    try:
        proc.wait_available("embed")
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def channel(replica: ReplicaProc) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(replica.grpc_addr) as ch:
        yield ch


@pytest.fixture()
def predict_stub(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture()
def model_stub(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def _floats(values: list[float], dtype: int = types_pb2.DT_FLOAT) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))])
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape)
    (proto.float_val if dtype == types_pb2.DT_FLOAT else proto.double_val).extend(values)
    return proto


def _predict_request(model: str = "half_plus_two", **spec: object) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value  # type: ignore[assignment]
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(_floats([1.0, 2.0, 5.0]))
    return request


def _error(body: bytes) -> str:
    return str(json.loads(body)["error"])


def _rpc_error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)  # type: ignore[operator]
    return info.value


# ---------------------------------------------------------------- gRPC


def test_grpc_predict_versions_labels_and_model_spec(
    predict_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    latest = predict_stub.Predict(_predict_request(), timeout=10)
    assert list(latest.outputs["y"].float_val) == [3.5, 4.0, 5.5]
    assert latest.outputs["y"].tensor_shape.dim[0].size == 3
    assert (latest.model_spec.name, latest.model_spec.version.value, latest.model_spec.signature_name) == (
        "half_plus_two",
        2,
        "serving_default",
    )
    v1 = predict_stub.Predict(_predict_request(version=1), timeout=10)
    assert list(v1.outputs["y"].float_val) == [2.5, 3.0, 4.5]
    stable = predict_stub.Predict(_predict_request(version_label="stable"), timeout=10)
    assert (list(stable.outputs["y"].float_val), stable.model_spec.version.value) == ([2.5, 3.0, 4.5], 1)


def test_grpc_errors(predict_stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    cases = [
        (_predict_request("nope"), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (
            _predict_request(version=7),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(half_plus_two, 7)",
        ),
        (
            _predict_request(version_label="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: nope",
        ),
        (
            _predict_request(signature_name="nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        (predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
        (_predict_request(""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    ]
    for request, code, message in cases:
        error = _rpc_error(predict_stub.Predict, request)
        assert (error.code(), error.details()) == (code, message)
    renamed = _predict_request()
    renamed.inputs["z"].CopyFrom(renamed.inputs.pop("x"))
    error = _rpc_error(predict_stub.Predict, renamed)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("Signature input alias: x(feed name: x:0) not found in request")
    doubles = _predict_request()
    doubles.inputs["x"].CopyFrom(_floats([1.0], types_pb2.DT_DOUBLE))
    assert _rpc_error(predict_stub.Predict, doubles).code() == grpc.StatusCode.INVALID_ARGUMENT


def _examples(*xs: float) -> list[dict[str, float]]:
    return [{"x": x} for x in xs]


def test_grpc_classify_regress_multi_inference(
    predict_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.version.value = 1
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    answer = predict_stub.Classify(classify, timeout=10)
    assert [(c.label, c.score) for c in answer.result.classifications[0].classes] == [("", 3.0)]
    assert answer.model_spec.version.value == 1

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "half_plus_two"
    regress.model_spec.version.value = 1
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.example_list.examples.add().features.feature["x"].float_list.value.append(80.0)
    assert [r.value for r in predict_stub.Regress(regress, timeout=10).result.regressions] == [42.0]

    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("classify_x_to_y", "tensorflow/serving/classify"),
        ("regress_x_to_y2", "tensorflow/serving/regress"),
    ):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name = "half_plus_two"
        task.model_spec.version.value = 1
        task.model_spec.signature_name = signature
    multi.input.example_list.examples.add().features.feature["x"].float_list.value.append(10.0)
    results = predict_stub.MultiInference(multi, timeout=10).results
    assert results[0].classification_result.classifications[0].classes[0].score == 7.0
    assert results[1].regression_result.regressions[0].value == 8.0
    assert results[1].model_spec.signature_name == "regress_x_to_y2"

    regress.model_spec.signature_name = "nope"
    error = _rpc_error(predict_stub.Regress, regress)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "No signature was found with the name: nope",
    )


def test_grpc_status_and_metadata(
    predict_stub: prediction_service_pb2_grpc.PredictionServiceStub,
    model_stub: model_service_pb2_grpc.ModelServiceStub,
) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.version_label = "stable"  # ignored by GetModelStatus
    answer = model_stub.GetModelStatus(request, timeout=10)
    assert [(v.version, v.state) for v in answer.model_version_status] == [(2, 30), (1, 30)]
    request.model_spec.name = "nope"
    error = _rpc_error(model_stub.GetModelStatus, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )

    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "half_plus_two"
    answer_md = predict_stub.GetModelMetadata(metadata, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert answer_md.metadata["signature_def"].Unpack(signatures)
    assert answer_md.model_spec.version.value == 2
    assert "regress_x2_to_y3" in signatures.signature_def


# Bytes that parse as no request message: a field tag with wire type 7, and a length past the end.
UNPARSABLE = [b"\xff\xff\xff\xff garbage", b"\x0a\x80"]
# Every method the replica serves. HandleReloadConfigRequest is safe here: nothing that fails to
# parse can reach the reload.
RAW_METHODS = [
    "/tensorflow.serving.PredictionService/" + m
    for m in ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")
] + [
    "/tensorflow.serving.ModelService/GetModelStatus",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
]


@pytest.mark.parametrize("method", RAW_METHODS)
def test_unparsable_request_is_internal_as_grpc_cpp(
    replica: ReplicaProc, channel: grpc.Channel, method: str
) -> None:
    """gRPC C++ (TF Serving) answers INTERNAL with empty details when a request does not parse;
    grpc.aio on its own would answer UNKNOWN "Unexpected DecodeError". No servicer code runs, so
    nothing is counted."""
    before = replica.request_count("")
    raw = channel.unary_unary(method)  # no serializer: the bytes go out as they are
    for garbage in UNPARSABLE:
        with pytest.raises(grpc.RpcError) as info:
            raw(garbage, timeout=10)
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INTERNAL, "")
    assert replica.request_count("") == before
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_two"
    answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=10)
    assert [v.state for v in answer.model_version_status] == [30, 30]  # still serving


# ---------------------------------------------------------------- knobs and metrics


def test_knobs_inject_errors_latency_and_gpu_gauges(
    replica: ReplicaProc, predict_stub: prediction_service_pb2_grpc.PredictionServiceStub
) -> None:
    url = f"{replica.rest_url}/v1/models/half_plus_two:predict"
    try:
        assert replica.set_knobs(error_rate=1.0)["error_rate"] == 1.0
        status, body = http_post(url, INSTANCES)
        assert status == 503
        assert _error(body) == "The batch scheduling queue to which this task was submitted is full"
        assert _rpc_error(predict_stub.Predict, _predict_request()).code() == grpc.StatusCode.UNAVAILABLE
        assert http_get(f"{replica.rest_url}/v1/models/half_plus_two")[0] == 200  # status unaffected

        replica.set_knobs(error_rate=0.0, latency_ms=3000)
        with pytest.raises(grpc.RpcError) as info:
            predict_stub.Predict(_predict_request(), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        assert "DCGM_FI_DEV_GPU_UTIL" not in replica.metrics_text()
        replica.set_knobs(latency_ms=0, gpu_util=0.95)
        assert 'DCGM_FI_DEV_GPU_UTIL{gpu="0"' in replica.metrics_text()
        assert " 95\n" in replica.metrics_text()
        with pytest.raises(ValueError, match="unknown knob"):
            replica.set_knobs(bogus=1)
    finally:
        replica.set_knobs(error_rate=0.0, latency_ms=0, gpu_util=None)
    assert http_post(url, INSTANCES) == (200, V2_PREDICTIONS)


def test_metrics_count_inference_calls_exactly(
    replica: ReplicaProc, predict_stub: prediction_service_pb2_grpc.PredictionServiceStub
) -> None:
    before = replica.request_count("embed")
    before_ok = replica.tf_request_count("embed", "OK")
    for _ in range(3):
        assert (
            http_post(f"{replica.rest_url}/v1/models/embed:predict", {"instances": [[1.0, 0.0, 0.0, 0.0]]})[0]
            == 200
        )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "embed"
    request.inputs["x"].CopyFrom(_floats([0.0, 2.0, 0.0, 0.0]))
    request.inputs["x"].tensor_shape.dim[0].size = 1
    request.inputs["x"].tensor_shape.dim.add(size=4)
    for _ in range(2):
        answer = predict_stub.Predict(request, timeout=10)
        assert list(answer.outputs["embedding"].float_val) == [0.0, 1.0, 0.0, 0.0]
    assert http_get(f"{replica.rest_url}/v1/models/embed")[0] == 200  # status: not an inference call
    assert replica.request_count("embed") - before == 5
    assert replica.tf_request_count("embed", "OK") - before_ok == 6  # TF Serving counts REST status calls
    text = replica.metrics_text()
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    bucket = ':tensorflow:serving:request_latency_bucket{model_name="embed",API="Predict",entrypoint="GRPC"'
    assert bucket + ',le="+Inf"} ' in text
