"""gateway.core.wire against the official protobuf classes: reading and rewriting the ModelSpec."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorflow_serving")

from google.protobuf import wrappers_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
)

from gateway.core.errors import BadRequest  # noqa: E402
from gateway.core.wire import (  # noqa: E402
    RestTarget,
    WireError,
    parse_rest_path,
    read_spec,
    rest_path_for,
    rewrite_version,
)


def _predict(**spec: object) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = str(spec.get("name", "m"))
    if "version" in spec:
        req.model_spec.version.value = int(spec["version"])  # type: ignore[call-overload]
    if "label" in spec:
        req.model_spec.version_label = str(spec["label"])
    if "signature" in spec:
        req.model_spec.signature_name = str(spec["signature"])
    req.inputs["x"].dtype = 1
    req.inputs["x"].float_val.extend([1.0, 2.0, 5.0])
    req.output_filter.append("y")
    return req


@pytest.mark.parametrize("spec", [
    {"name": "half_plus_two"},
    {"name": "m", "version": 3, "signature": "serving_default"},
    {"name": "m", "label": "canary"},
    {"name": "m", "version": 0},
    {"name": "ünï", "version": 2**40},
])
def test_read_spec_matches_protobuf(spec: dict[str, object]) -> None:
    req = _predict(**spec)
    got = read_spec(req.SerializeToString())
    assert got is not None
    assert got.name == req.model_spec.name
    assert got.signature == req.model_spec.signature_name
    if req.model_spec.HasField("version"):
        assert got.version == req.model_spec.version.value and got.label is None
    else:
        assert got.version is None
    if req.model_spec.version_label:
        assert got.label == req.model_spec.version_label


def test_rewrite_keeps_everything_but_the_version() -> None:
    req = _predict(name="m", label="canary", signature="sig")
    out = predict_pb2.PredictRequest.FromString(rewrite_version(req.SerializeToString(), 7))
    assert out.model_spec.name == "m"
    assert out.model_spec.signature_name == "sig"
    assert out.model_spec.version.value == 7
    assert out.model_spec.WhichOneof("version_choice") == "version"
    assert list(out.inputs["x"].float_val) == [1.0, 2.0, 5.0]
    assert list(out.output_filter) == ["y"]


def test_rewrite_version_zero_is_explicit() -> None:
    req = _predict(name="m")
    out = predict_pb2.PredictRequest.FromString(rewrite_version(req.SerializeToString(), 0))
    assert out.model_spec.HasField("version") and out.model_spec.version.value == 0


def test_metadata_request_rewrite() -> None:
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "m"
    req.metadata_field.append("signature_def")
    out = get_model_metadata_pb2.GetModelMetadataRequest.FromString(
        rewrite_version(req.SerializeToString(), 2))
    assert out.model_spec.version.value == 2 and list(out.metadata_field) == ["signature_def"]


def test_multi_inference_reads_first_task_and_rewrites_matching_tasks() -> None:
    req = inference_pb2.MultiInferenceRequest()
    for name, method in [("m", "tensorflow/serving/regress"), ("other", "tensorflow/serving/classify")]:
        t = req.tasks.add()
        t.model_spec.name = name
        t.method_name = method
    req.input.example_list.examples.add()
    body = req.SerializeToString()
    spec = read_spec(body, multi=True)
    assert spec is not None and spec.name == "m"
    out = inference_pb2.MultiInferenceRequest.FromString(
        rewrite_version(body, 5, multi=True, model="m"))
    assert out.tasks[0].model_spec.version.value == 5
    assert not out.tasks[1].model_spec.HasField("version")
    assert out.tasks[1].method_name == "tensorflow/serving/classify"
    assert len(out.input.example_list.examples) == 1


def test_missing_spec_and_garbage() -> None:
    assert read_spec(b"") is None
    with pytest.raises(WireError):
        read_spec(b"\x0a\xff\xff\xff\xff\x0f")
    with pytest.raises(WireError):
        read_spec(b"\x0f")


def test_model_spec_merge_of_repeated_field() -> None:
    a = model_pb2.ModelSpec(name="m").SerializeToString()
    b = model_pb2.ModelSpec(version=wrappers_pb2.Int64Value(value=4)).SerializeToString()
    body = b"\x0a" + bytes([len(a)]) + a + b"\x0a" + bytes([len(b)]) + b
    spec = read_spec(body)
    assert spec is not None and spec.name == "m" and spec.version == 4


@pytest.mark.parametrize("method,path,expected", [
    ("GET", "/v1/models/m", RestTarget("m", None, None, "status")),
    ("GET", "/v1/models/m/versions/3", RestTarget("m", 3, None, "status")),
    ("GET", "/V1/Models/m/labels/canary/metadata", RestTarget("m", None, "canary", "metadata")),
    # TF Serving compares "metadata" and the verb case-sensitively (after a case-blind match).
    ("GET", "/v1/models/m/METADATA", RestTarget("m", None, None, "status")),
    ("GET", "/v1/models/m/", None),
    ("POST", "/v1/models/m:predict", RestTarget("m", None, None, "predict")),
    ("POST", "/v1/models/m/versions/2:classify", RestTarget("m", 2, None, "classify")),
    ("POST", "/v1/models/m/versions/2:Classify", None),
    ("POST", "/v1/models/m/labels/stable:regress", RestTarget("m", None, "stable", "regress")),
    ("POST", "/v1/models/m", None),
    ("GET", "/v1/models/m:predict", None),
    ("POST", "/v1/models/m:explain", None),
])
def test_rest_paths(method: str, path: str, expected: RestTarget | None) -> None:
    assert parse_rest_path(method, path) == expected


def test_rest_path_rewrite() -> None:
    t = RestTarget("m", None, "canary", "predict")
    assert rest_path_for(t, 4) == "/v1/models/m/versions/4:predict"
    assert rest_path_for(t, None) == "/v1/models/m/labels/canary:predict"
    assert rest_path_for(RestTarget("m", None, None, "metadata"), 1) == "/v1/models/m/versions/1/metadata"
    # status lists every version whatever the label: a resolved label must not narrow it
    assert rest_path_for(RestTarget("m", None, "canary", "status"), 2) == "/v1/models/m/labels/canary"
    assert rest_path_for(RestTarget("m", 1, None, "status"), 1) == "/v1/models/m/versions/1"


def test_huge_version_number_is_a_bad_request() -> None:
    assert parse_rest_path("GET", "/v1/models/m/versions/99999999999999999999") is not None
    with pytest.raises(BadRequest):
        parse_rest_path("GET", "/v1/models/m/versions/" + "9" * 5000)
