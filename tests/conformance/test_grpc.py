"""gRPC conformance with the official tensorflow_serving.apis stubs: each case goes to the replica
and to the gateway, and code, details, response message and metadata must match.

Each case names the code TF Serving gives, so two equally wrong answers still fail. Requests
without a version reach the replica through the gateway with the resolved version written into
the ModelSpec; the answer is the same because the replica's "latest" is that version too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.conformance.conftest import CLIENT_OPTIONS, Pair, Target
from tests.conformance.outcome import GATEWAY_HEADERS, GrpcOutcome, grpc_call

pytestmark = pytest.mark.integration

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
# A request that does not parse: tensorflow_model_server (gRPC C++) answers INTERNAL, and so do
# the replica and, relaying it, the gateway.
CORRUPT = grpc.StatusCode.INTERNAL
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
HPT = "half_plus_two"
BIG = 2_621_440  # float32 elements: 10 MiB of tensor, each way


def spec(name: str = HPT, version: int | None = None, label: str | None = None,
         signature: str = "") -> model_pb2.ModelSpec:
    s = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        s.version.value = version
    if label is not None:
        s.version_label = label
    return s


def floats(values: list[float], shape: list[int] | None = None) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (shape or [len(values)])]
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values,
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims))


def big_tensor() -> tensor_pb2.TensorProto:
    data = np.full(BIG, 1.5, dtype=np.float32).tobytes()
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_content=data,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=BIG)]))


def predict(s: model_pb2.ModelSpec | None = None, x: tensor_pb2.TensorProto | None = None,
            key: str = "x", output_filter: tuple[str, ...] = ()) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(output_filter=list(output_filter))
    if s is not None:
        req.model_spec.CopyFrom(s)
    req.inputs[key].CopyFrom(x if x is not None else floats([1.0, 2.0, 5.0]))
    return req


def examples(*xs: float) -> Any:
    from tensorflow_serving.apis import input_pb2

    inp = input_pb2.Input()
    for x in xs:
        ex = example_pb2.Example()
        ex.features.feature["x"].float_list.value.append(x)
        inp.example_list.examples.append(ex)
    return inp


def classify(s: model_pb2.ModelSpec) -> classification_pb2.ClassificationRequest:
    return classification_pb2.ClassificationRequest(model_spec=s, input=examples(2.0))


def regress(s: model_pb2.ModelSpec) -> regression_pb2.RegressionRequest:
    return regression_pb2.RegressionRequest(model_spec=s, input=examples(80.0, 2.0))


def multi(*specs_and_methods: tuple[model_pb2.ModelSpec, str]) -> inference_pb2.MultiInferenceRequest:
    req = inference_pb2.MultiInferenceRequest(input=examples(2.0, 80.0))
    for s, method in specs_and_methods:
        req.tasks.add(model_spec=s, method_name=method)
    return req


def metadata(s: model_pb2.ModelSpec, fields: tuple[str, ...] = ("signature_def",)
             ) -> get_model_metadata_pb2.GetModelMetadataRequest:
    return get_model_metadata_pb2.GetModelMetadataRequest(model_spec=s, metadata_field=list(fields))


def status(s: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusRequest:
    return get_model_status_pb2.GetModelStatusRequest(model_spec=s)


CLASSIFY_SIG = "classify_x_to_y"
REGRESS_SIG = "regress_x_to_y"
C = "tensorflow/serving/classify"
R = "tensorflow/serving/regress"


@dataclass(frozen=True)
class GrpcCase:
    method: str  # "Predict", "GetModelStatus", ... or a full "/service/Method" path (raw bytes)
    build: Callable[[Pair], Any]  # the request (a message, or bytes for a raw call)
    expect: grpc.StatusCode | None  # None: any error (the transport's own code)
    timeout: float = 30.0
    compare_details: bool = True
    gateway_md: bool = True  # the gateway's x-infergate-* initial metadata is expected


def case(id: str, method: str, build: Callable[[Pair], Any], expect: grpc.StatusCode | None,
         **kw: Any) -> Any:
    return pytest.param(GrpcCase(method, build, expect, **kw), id=id)


def _const(value: Any) -> Callable[[Pair], Any]:
    return lambda _pair: value


def reload_request(pair: Pair) -> model_management_pb2.ReloadConfigRequest:
    """The replica's own model config, sent back unchanged: a reload that changes nothing."""
    config = text_format.Parse(pair.model_config.read_text(),
                               model_server_config_pb2.ModelServerConfig())
    return model_management_pb2.ReloadConfigRequest(config=config, metric_names=["a", "b"])


SPEC_BYTES = spec().SerializeToString()
PREDICT_BYTES = predict(spec()).SerializeToString()

CASES = [
    # Predict
    case("predict-latest", "Predict", _const(predict(spec())), OK),
    case("predict-version-1", "Predict", _const(predict(spec(version=1))), OK),
    case("predict-version-2", "Predict", _const(predict(spec(version=2))), OK),
    case("predict-label-stable", "Predict", _const(predict(spec(label="stable"))), OK),
    case("predict-label-canary", "Predict", _const(predict(spec(label="canary"))), OK),
    case("predict-signature", "Predict", _const(predict(spec(signature="serving_default"))), OK),
    case("predict-output-filter", "Predict", _const(predict(spec(), output_filter=("y",))), OK),
    case("predict-output-filter-unknown", "Predict",
         _const(predict(spec(), output_filter=("nope",))), INVALID),
    case("predict-two-outputs", "Predict",
         _const(predict(spec("embed", signature="with_norm"), floats([3.0, 4.0, 0.0, 0.0], [1, 4]))),
         OK),
    case("predict-unknown-model", "Predict", _const(predict(spec("nope"))), NOT_FOUND),
    case("predict-unknown-version", "Predict", _const(predict(spec(version=9))), NOT_FOUND),
    case("predict-unknown-label", "Predict", _const(predict(spec(label="nolabel"))), INVALID),
    case("predict-no-spec", "Predict", _const(predict(None)), INVALID),
    case("predict-empty-name", "Predict", _const(predict(spec(""))), INVALID),
    case("predict-unknown-signature", "Predict", _const(predict(spec(signature="nope"))),
         PRECONDITION),
    case("predict-unknown-input", "Predict", _const(predict(spec(), key="nope")), INVALID),
    case("predict-wrong-shape", "Predict", _const(predict(spec(), floats([1.0, 2.0, 3.0], [2]))),
         INVALID),
    case("predict-wrong-dtype", "Predict",
         _const(predict(spec(), tensor_pb2.TensorProto(
             dtype=types_pb2.DT_STRING, string_val=[b"a"],
             tensor_shape=tensor_shape_pb2.TensorShapeProto(
                 dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))), INVALID),
    case("predict-10mib-both-ways", "Predict", lambda _p: predict(spec(version=1), big_tensor()),
         OK),
    # Classify / Regress / MultiInference
    case("classify", "Classify", _const(classify(spec(signature=CLASSIFY_SIG))), OK),
    case("classify-label", "Classify", _const(classify(spec(label="stable", signature=CLASSIFY_SIG))),
         OK),
    case("classify-unknown-model", "Classify", _const(classify(spec("nope"))), NOT_FOUND),
    case("classify-wrong-signature-kind", "Classify", _const(classify(spec(signature=REGRESS_SIG))),
         INVALID),
    case("regress", "Regress", _const(regress(spec(signature=REGRESS_SIG))), OK),
    case("regress-version-1", "Regress", _const(regress(spec(version=1, signature=REGRESS_SIG))), OK),
    case("regress-unknown-version", "Regress", _const(regress(spec(version=9))), NOT_FOUND),
    case("multi-inference", "MultiInference",
         _const(multi((spec(signature=CLASSIFY_SIG), C), (spec(signature=REGRESS_SIG), R))), OK),
    case("multi-inference-label", "MultiInference",
         _const(multi((spec(label="stable", signature=CLASSIFY_SIG), C),
                      (spec(label="stable", signature=REGRESS_SIG), R))), OK),
    case("multi-inference-mixed-versions", "MultiInference",
         _const(multi((spec(version=1, signature=CLASSIFY_SIG), C),
                      (spec(version=2, signature=REGRESS_SIG), R))), OK),
    case("multi-inference-two-models", "MultiInference",
         _const(multi((spec(signature=CLASSIFY_SIG), C), (spec("embed", signature=REGRESS_SIG), R))),
         INVALID),
    case("multi-inference-unknown-model", "MultiInference",
         _const(multi((spec("nope", signature=CLASSIFY_SIG), C))), NOT_FOUND),
    case("multi-inference-no-tasks", "MultiInference", _const(multi()), INVALID),
    # GetModelMetadata
    case("metadata", "GetModelMetadata", _const(metadata(spec())), OK),
    case("metadata-version-1", "GetModelMetadata", _const(metadata(spec(version=1))), OK),
    case("metadata-label-canary", "GetModelMetadata", _const(metadata(spec(label="canary"))), OK),
    case("metadata-unknown-model", "GetModelMetadata", _const(metadata(spec("nope"))), NOT_FOUND),
    case("metadata-unknown-label", "GetModelMetadata", _const(metadata(spec(label="nolabel"))),
         INVALID),
    case("metadata-no-field", "GetModelMetadata", _const(metadata(spec(), ())), INVALID),
    case("metadata-bad-field", "GetModelMetadata", _const(metadata(spec(), ("nope",))), INVALID),
    # GetModelStatus (a label is ignored: every version is listed)
    case("status", "GetModelStatus", _const(status(spec())), OK),
    case("status-version-1", "GetModelStatus", _const(status(spec(version=1))), OK),
    case("status-label-ignored", "GetModelStatus", _const(status(spec(label="canary"))), OK),
    case("status-unknown-label-ignored", "GetModelStatus", _const(status(spec(label="nolabel"))),
         OK),
    case("status-unknown-model", "GetModelStatus", _const(status(spec("nope"))), NOT_FOUND),
    case("status-unknown-version", "GetModelStatus", _const(status(spec(version=9))), NOT_FOUND),
    case("status-no-spec", "GetModelStatus", _const(get_model_status_pb2.GetModelStatusRequest()),
         INVALID),
    # Corrupt protobuf, sent as raw bytes
    case("corrupt-garbage", "/tensorflow.serving.PredictionService/Predict",
         _const(b"\xff\xff\xff\xff garbage"), CORRUPT),
    case("corrupt-truncated", "/tensorflow.serving.PredictionService/Predict",
         _const(PREDICT_BYTES[:-3]), CORRUPT),
    case("corrupt-spec", "/tensorflow.serving.PredictionService/Predict",
         _const(b"\x0a\x05\x0a\x09half"), CORRUPT),
    case("corrupt-after-valid-spec", "/tensorflow.serving.PredictionService/Predict",
         _const(b"\x0a" + bytes([len(SPEC_BYTES)]) + SPEC_BYTES + b"\x12\xff\xff\x01"),
         CORRUPT),
    case("corrupt-status", "/tensorflow.serving.ModelService/GetModelStatus",
         _const(b"\x0a\x80"), CORRUPT),
    # Methods that do not exist
    case("unknown-method", "/tensorflow.serving.PredictionService/Explain", _const(PREDICT_BYTES),
         UNIMPLEMENTED),
    case("unknown-service", "/acme.Nothing/Call", _const(b""), UNIMPLEMENTED, gateway_md=False),
    # HandleReloadConfigRequest (last: it touches the replica's config)
    case("reload-unsupported-config", "HandleReloadConfigRequest",
         _const(model_management_pb2.ReloadConfigRequest()), INVALID),
    case("reload-same-config", "HandleReloadConfigRequest", reload_request, OK),
]

PREDICTION_METHODS = {"Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata"}


def call(target: Target, c: GrpcCase, request: Any,
         metadata: tuple[tuple[str, str], ...] = ()) -> GrpcOutcome:
    if c.method.startswith("/"):
        fn = target.channel.unary_unary(c.method)
    elif c.method in PREDICTION_METHODS:
        fn = getattr(prediction_service_pb2_grpc.PredictionServiceStub(target.channel), c.method)
    else:
        fn = getattr(model_service_pb2_grpc.ModelServiceStub(target.channel), c.method)
    return grpc_call(fn, request, timeout=c.timeout, metadata=metadata)


@pytest.mark.parametrize("c", CASES)
def test_grpc_same_outcome(pair: Pair, c: GrpcCase) -> None:
    request = c.build(pair)
    direct = call(pair.direct, c, request)
    via = call(pair.via, c, request)
    if c.expect is None:
        assert direct.code != OK
    else:
        assert direct.code == c.expect, direct.details
    assert via.code == direct.code, via.details
    if c.compare_details:
        assert via.details == direct.details
    assert via.response == direct.response
    assert via.trailing == direct.trailing
    assert via.initial == direct.initial
    if c.gateway_md:
        missing = [k for k in GATEWAY_HEADERS if k not in via.gateway_md]
        assert not missing, f"gateway answer lacks {missing}"


def test_grpc_answer_names_the_resolved_version(pair: Pair) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(pair.via.channel)
    out = grpc_call(stub.Predict, predict(spec()))
    assert out.code == OK and out.gateway_md["x-infergate-version"] == "2"
    assert out.response.model_spec.version.value == 2
    out = grpc_call(stub.Predict, predict(spec(label="stable")))
    assert out.gateway_md["x-infergate-version"] == "1"
    assert list(out.response.outputs["y"].float_val) == [2.5, 3.0, 4.5]


def test_grpc_compressed_call(pair: Pair) -> None:
    """A client that gzips its messages gets the same answer from both targets."""
    outcomes = []
    for target in pair.targets:
        with grpc.insecure_channel(target.grpc_addr, options=CLIENT_OPTIONS,
                                   compression=grpc.Compression.Gzip) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            outcomes.append(grpc_call(stub.Predict, predict(spec(label="canary"))))
    direct, via = outcomes
    assert direct.code == OK
    assert (via.code, via.response, via.trailing) == (direct.code, direct.response, direct.trailing)


def test_grpc_big_message_needs_client_limits(pair: Pair) -> None:
    """A client on the 4 MiB default cannot receive the 10 MiB answer, from either target: the
    limit is the client's own, and the gateway does not hide or change it."""
    request = predict(spec(version=1), big_tensor())
    for target in pair.targets:
        with grpc.insecure_channel(target.grpc_addr, options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            out = grpc_call(stub.Predict, request)
        assert out.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (target.name, out.details)


def test_grpc_deadline_propagates_to_the_replica(pair: Pair) -> None:
    """The expired-deadline case. With 500 ms of added latency and a 200 ms client deadline both
    targets answer DEADLINE_EXCEEDED, and the replica itself saw the deadline expire (it counts
    DEADLINE_EXCEEDED, not a cancellation) on both paths: the gateway forwarded the deadline.

    (A near-zero client deadline is no test: a local Predict often finishes before gRPC's
    deadline timer fires, so the outcome would be a race. The details are not compared for the
    same reason: the client's timer and the replica's own DEADLINE_EXCEEDED race each other.)"""
    replica = pair.replica
    c = GrpcCase("Predict", _const(predict(spec())), DEADLINE, timeout=0.2)
    replica.set_knobs(latency_ms=500)
    try:
        for target in pair.targets:
            expired = replica.request_count(HPT, "DEADLINE_EXCEEDED")
            cancelled = replica.request_count(HPT, "CANCELLED")
            out = call(target, c, c.build(pair))
            assert out.code == DEADLINE, (target.name, out.details)
            # The replica records the outcome when its handler ends, a moment after the client
            # gave up: wait for it rather than racing it.
            replica.wait_until(lambda e=expired: replica.request_count(HPT, "DEADLINE_EXCEEDED") > e,
                               timeout=10.0, what=f"counting the expired call via {target.name}")
            assert replica.request_count(HPT, "CANCELLED") == cancelled, target.name
    finally:
        replica.set_knobs(latency_ms=0)
