"""The replica against TF Serving's contract: REST and gRPC answers, errors, versions, knobs, metrics.

Real replica processes on free loopback ports serve real SavedModels (made once per session by
tests/support/models.py). Expected bodies are TF Serving's bytes where the layout matters
(predict/classify/regress/status), parsed JSON elsewhere.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.support.procs import ProcessFailed, ReplicaProc, http_get, http_post, start_replica

pytestmark = pytest.mark.integration

V1_PREDICTIONS = b'{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'
V2_PREDICTIONS = b'{\n    "predictions": [3.5, 4.0, 5.5\n    ]\n}'
INSTANCES = {"instances": [1.0, 2.0, 5.0]}


def _config_text(models: pathlib.Path, labels: bool = True) -> str:
    label_lines = (
        'version_labels { key: "stable" value: 1 }\n    version_labels { key: "canary" value: 2 }'
        if labels
        else ""
    )
    return f"""
model_config_list {{
  config {{
    name: "half_plus_two"
    base_path: "{models / "half_plus_two"}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    {label_lines}
  }}
  config {{
    name: "embed"
    base_path: "{models / "embed"}"
    model_platform: "tensorflow"
  }}
}}
"""


@pytest.fixture(scope="module")
def replica(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProc]:
    config = tmp_path_factory.mktemp("replica") / "models.config"
    config.write_text(_config_text(models_dir))
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


# ---------------------------------------------------------------- REST predict


def test_rest_predict_latest_version_answers_with_tf_serving_bytes(replica: ReplicaProc) -> None:
    status, body = http_post(f"{replica.rest_url}/v1/models/half_plus_two:predict", INSTANCES)
    assert (status, body) == (200, V2_PREDICTIONS)


def test_rest_predict_by_version_and_label(replica: ReplicaProc) -> None:
    base = f"{replica.rest_url}/v1/models/half_plus_two"
    assert http_post(f"{base}/versions/1:predict", INSTANCES) == (200, V1_PREDICTIONS)
    assert http_post(f"{base}/versions/2:predict", INSTANCES) == (200, V2_PREDICTIONS)
    assert http_post(f"{base}/labels/stable:predict", INSTANCES) == (200, V1_PREDICTIONS)
    assert http_post(f"{base}/labels/canary:predict", INSTANCES) == (200, V2_PREDICTIONS)


def test_rest_predict_columnar_rows_and_signature(replica: ReplicaProc) -> None:
    base = f"{replica.rest_url}/v1/models/half_plus_two/versions/1:predict"
    status, body = http_post(base, {"signature_name": "serving_default", "inputs": [1.0, 2.0]})
    assert (status, body) == (200, b'{\n    "outputs": [\n        2.5,\n        3.0\n    ]\n}')
    status, body = http_post(base, {"instances": [[1.0], [2.0]]})
    assert (status, body) == (200, b'{\n    "predictions": [[2.5], [3.0]\n    ]\n}')


def test_rest_predict_two_outputs_and_nan_tokens(replica: ReplicaProc) -> None:
    status, body = http_post(
        f"{replica.rest_url}/v1/models/embed:predict",
        {"signature_name": "with_norm", "instances": [[3.0, 4.0, 0.0, 0.0]]},
    )
    assert status == 200
    assert body == (
        b'{\n    "predictions": [\n        {\n            "embedding": [0.6, 0.8, 0.0, 0.0],'
        b'\n            "norm": 5.0\n        }\n    ]\n}'
    )
    status, body = http_post(
        f"{replica.rest_url}/v1/models/half_plus_two/versions/1:predict",
        '{"instances": [NaN, Infinity, -Infinity]}',
    )
    assert (status, body) == (200, b'{\n    "predictions": [NaN, Infinity, -Infinity\n    ]\n}')


def test_rest_gzip_body_and_case_insensitive_path(replica: ReplicaProc) -> None:
    url = f"{replica.rest_url}/V1/Models/half_plus_two/VERSIONS/1:predict"
    status, body = http_post(
        url, gzip.compress(json.dumps(INSTANCES).encode()), headers={"Content-Encoding": "gzip"}
    )
    assert (status, body) == (200, V1_PREDICTIONS)
    status, body = http_post(f"{replica.rest_url}/v1/models/half_plus_two:PREDICT", INSTANCES)
    assert status == 400
    assert _error(body) == "Malformed request: POST /v1/models/half_plus_two:PREDICT"


def test_rest_classify_and_regress(replica: ReplicaProc) -> None:
    base = f"{replica.rest_url}/v1/models/half_plus_two/versions/1"
    status, body = http_post(
        f"{base}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    )
    assert (status, body) == (200, b'{\n    "results": [[["", 3.0]]\n    ]\n}')
    status, body = http_post(
        f"{base}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    )
    assert (status, body) == (200, b'{\n    "results": [42.0]\n}')
    status, body = http_post(
        f"{base}:regress",
        {"signature_name": "regress_x_to_y2", "context": {"x2": 1.0}, "examples": [{"x": 80.0}, {"x": 2.0}]},
    )
    assert (status, body) == (200, b'{\n    "results": [43.0, 4.0]\n}')
    status, body = http_post(f"{base}:classify", {"examples": [{"x": 2.0}]})
    assert status == 400
    assert _error(body).startswith("No classification inputs found in SignatureDef: ")


# ---------------------------------------------------------------- REST status, metadata, errors


def test_rest_status_lists_versions_newest_first(replica: ReplicaProc) -> None:
    status, body = http_get(f"{replica.rest_url}/v1/models/half_plus_two/versions/1")
    assert status == 200
    assert body == (
        b'{\n "model_version_status": [\n  {\n   "version": "1",\n   "state": "AVAILABLE",\n'
        b'   "status": {\n    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n'
    )
    states = replica.model_status("half_plus_two")
    assert [(s["version"], s["state"]) for s in states] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
    status, body = http_get(f"{replica.rest_url}/v1/models/half_plus_two/labels/stable")
    assert status == 200 and len(json.loads(body)["model_version_status"]) == 2  # labels are ignored


def test_rest_metadata(replica: ReplicaProc) -> None:
    status, body = http_get(f"{replica.rest_url}/v1/models/half_plus_two/labels/stable/metadata")
    assert status == 200
    assert body.startswith(b'{\n"model_spec":{\n "name": "half_plus_two",\n "version": "1",\n')
    doc = json.loads(body)
    signatures = doc["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
    assert signatures["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signatures["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/models/nope:predict", INSTANCES, 404, "Servable not found for request: Latest(nope)"),
        (
            "POST",
            "/v1/models/half_plus_two/versions/7:predict",
            INSTANCES,
            404,
            "Servable not found for request: Specific(half_plus_two, 7)",
        ),
        (
            "POST",
            "/v1/models/half_plus_two/labels/nope:predict",
            INSTANCES,
            400,
            "Unrecognized servable version label: nope",
        ),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        (
            "GET",
            "/v1/models/half_plus_two/versions/9",
            None,
            404,
            "Could not find version 9 of model half_plus_two",
        ),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
        (
            "GET",
            "/v1/models/half_plus_two:predict",
            None,
            400,
            "Malformed request: GET /v1/models/half_plus_two:predict",
        ),
        ("POST", "/v1/models/half_plus_two:predict", "", 400, "JSON Parse error: The document is empty"),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            "instances = [1, 2]",
            400,
            "JSON Parse error: Invalid value. at offset: 0",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            '{"instances": [1.0',
            400,
            "JSON Parse error: Missing a comma or ']' after an array element. at offset: 18",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"instances": ["x"]},
            400,
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            'JSON Value: "x" Type: String is not of expected type: float',
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"instances": [[1.0], 2.0]},
            400,
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting shape [1] but got: []",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"instances": [1.0], "inputs": [1.0]},
            400,
            'JSON Value: {\n    "instances": [1.0],\n    "inputs": [1.0]\n} '
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"inputs": {"y": [1.0]}},
            400,
            "Missing named input: x in 'inputs' object.",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"signature_name": "nope", "instances": [1.0]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"signature": 1},
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:regress",
            {"signature_name": "regress_x_to_y"},
            400,
            'JSON Value: {\n    "signature_name": "regress_x_to_y"\n} When method is classify, key '
            "'examples' is expected and was not found",
        ),
    ],
)
def test_rest_errors(
    replica: ReplicaProc, method: str, path: str, body: object, status: int, message: str
) -> None:
    url = replica.rest_url + path
    got_status, got_body = http_post(url, body) if method == "POST" else http_get(url)  # type: ignore[arg-type]
    assert got_status == status
    assert _error(got_body) == message


def test_rest_outside_v1_is_plain_404(replica: ReplicaProc) -> None:
    assert http_get(f"{replica.rest_url}/foo") == (404, b"")


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


# ---------------------------------------------------------------- versions on disk and config


def _add_version(src: pathlib.Path, base: pathlib.Path, version: int) -> None:
    staging = base / f".staging-{version}"
    shutil.copytree(src, staging)
    staging.rename(base / str(version))


def _wait_states(
    replica: ReplicaProc, model: str, expected: list[tuple[str, str]], timeout: float = 30.0
) -> None:
    replica.wait_until(
        lambda: [(s["version"], s["state"]) for s in replica.model_status(model)] == expected,
        timeout=timeout,
        what=f"showing {expected}",
    )


def test_versions_load_and_unload_while_polling(models_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    base = tmp_path / "half_plus_two"
    base.mkdir()
    _add_version(models_dir / "half_plus_two" / "1", base, 1)
    replica = start_replica(base, extra_args=["--file_system_poll_wait_seconds=0.2"])
    try:
        _wait_states(replica, "half_plus_two", [("1", "AVAILABLE")])
        _add_version(models_dir / "half_plus_two" / "2", base, 2)
        _wait_states(replica, "half_plus_two", [("2", "AVAILABLE"), ("1", "END")])
        url = f"{replica.rest_url}/v1/models/half_plus_two:predict"
        assert http_post(url, INSTANCES) == (200, V2_PREDICTIONS)

        shutil.rmtree(base / "2")
        _wait_states(replica, "half_plus_two", [("2", "END"), ("1", "AVAILABLE")])
        assert http_post(url, INSTANCES) == (200, V1_PREDICTIONS)

        with grpc.insecure_channel(replica.grpc_addr) as ch:
            stub = model_service_pb2_grpc.ModelServiceStub(ch)
            reload = model_management_pb2.ReloadConfigRequest()
            model = reload.config.model_config_list.config.add(
                name="half_plus_two", base_path=str(base), model_platform="tensorflow"
            )
            model.version_labels["stable"] = 5
            error = _rpc_error(stub.HandleReloadConfigRequest, reload)
            assert (error.code(), error.details()) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "Request to assign label to version 5 of model half_plus_two, which is not currently "
                "available for inference",
            )
            model.version_labels["stable"] = 1
            answer = stub.HandleReloadConfigRequest(reload, timeout=30)
            assert answer.status.error_code == 0
        assert http_post(f"{replica.rest_url}/v1/models/half_plus_two/labels/stable:predict", INSTANCES) == (
            200,
            V1_PREDICTIONS,
        )
    finally:
        replica.stop()


def test_labels_on_unloaded_versions_fail_start_up_as_in_tf_serving(
    models_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "models.config"
    config.write_text(_config_text(models_dir))
    with pytest.raises(ProcessFailed, match="Request to assign label to version"):
        start_replica(config, timeout=60)


def test_model_config_text_proto_policies(models_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(
        name="half_plus_two", base_path=str(models_dir / "half_plus_two")
    )
    model.model_version_policy.specific.versions.append(1)
    path = tmp_path / "specific.config"
    from google.protobuf import text_format

    path.write_text(text_format.MessageToString(config))
    replica = start_replica(path, monitoring=False)
    try:
        assert [(s["version"], s["state"]) for s in replica.model_status("half_plus_two")] == [
            ("1", "AVAILABLE")
        ]
        assert http_get(f"{replica.rest_url}/monitoring/prometheus/metrics")[0] == 404  # monitoring off
    finally:
        replica.stop()


def test_cli_rejects_unknown_flags_and_accepts_tf_serving_ones() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "replica", "--model_base_path=/x", "--no_such_flag=1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert bad.returncode == 2
    assert "--no_such_flag" in bad.stderr
    empty = subprocess.run(
        [sys.executable, "-m", "replica", "--grpc_max_threads=4", "--enable_batching"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert empty.returncode == 2
    assert "Both server_model_config_file and model_base_path are empty!" in empty.stderr
    assert "--grpc_max_threads is accepted" in empty.stderr
