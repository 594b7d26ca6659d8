"""gRPC metadata and error details pass through the gateway unchanged.

A TF Serving replica sends no metadata of its own, so this module puts a small scripted upstream
behind the gateway instead: a real gRPC server on a loopback port (in this process, on gRPC's own
threads) that answers GetModelStatus for model "echo" like TF Serving and answers Predict with
initial metadata, trailing metadata (text and binary), google.rpc.Status details in
grpc-status-details-bin, and an echo of the client's x-client-* metadata. Each case calls it
directly and through the gateway and compares everything a client can see.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.conformance.conftest import CLIENT_OPTIONS, ENGINES
from tests.conformance.outcome import GATEWAY_HEADERS, grpc_call
from tests.integration.gwproc import EngineGateway

pytestmark = pytest.mark.integration

STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
AVAILABLE = 30


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def rich_status(code: int, message: str) -> bytes:
    """google.rpc.Status {code = 1, message = 2, details = 3 (Any {type_url = 1, value = 2})},
    written by hand: the test needs its bytes, not a dependency on googleapis-common-protos."""
    any_detail = (_len_field(1, b"type.googleapis.com/google.rpc.DebugInfo")
                  + _len_field(2, _len_field(2, b"detail from the replica")))
    return bytes([0x08, code]) + _len_field(2, message.encode()) + _len_field(3, any_detail)


MODES: dict[str, tuple[grpc.StatusCode, str]] = {
    "fail": (grpc.StatusCode.FAILED_PRECONDITION, "précondition non remplie: ünïcode détails"),
    "busy": (grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue is full"),
    "internal": (grpc.StatusCode.INTERNAL, "x" * 3000),
}


class ScriptedReplica(grpc.GenericRpcHandler):
    """The behaviour of Predict is chosen by the request's signature_name: "ok" or a MODES key."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        if method == STATUS:
            return grpc.unary_unary_rpc_method_handler(
                self.status, get_model_status_pb2.GetModelStatusRequest.FromString,
                get_model_status_pb2.GetModelStatusResponse.SerializeToString)
        if method == PREDICT:
            return grpc.unary_unary_rpc_method_handler(
                self.predict, predict_pb2.PredictRequest.FromString,
                predict_pb2.PredictResponse.SerializeToString)
        return None

    def status(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = request.model_spec.name
        if name != "echo":
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=1, state=AVAILABLE)
        return response

    def predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        echo = [("x-echo-" + k[len("x-client-"):], v) for k, v in context.invocation_metadata()
                if k.startswith("x-client-")]
        context.send_initial_metadata((("x-initial", "from-replica"),
                                       ("x-initial-bin", b"\x00\x01\x02")))
        trailers = [("x-trailer", "t1"), ("x-trailer", "t2"), ("x-trailer-bin", b"\xff\x00"), *echo]
        mode = request.model_spec.signature_name
        if mode == "ok":
            context.set_trailing_metadata(trailers)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = "echo"
            response.model_spec.version.value = 1
            return response
        code, message = MODES[mode]
        context.set_trailing_metadata(
            [*trailers, ("grpc-status-details-bin", rich_status(code.value[0], message))])
        context.abort(code, message)


@dataclass
class Setup:
    upstream_addr: str
    gateway: EngineGateway


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         handlers=(ScriptedReplica(),), options=CLIENT_OPTIONS)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module", params=ENGINES)
def setup(request: pytest.FixtureRequest, upstream: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cfg = {"replicas": [{"name": "scripted", "grpc": upstream}], "models": {"echo": {}}}
    gateway = EngineGateway(cfg, pathlib.Path(tmp_path_factory.mktemp("passthrough")),
                            request.param)
    try:
        yield Setup(upstream, gateway)
    finally:
        gateway.stop()


def _predict(mode: str) -> predict_pb2.PredictRequest:
    return predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="echo", signature_name=mode))


CLIENT_MD = {
    "none": (),
    "text": (("x-client-user", "alice"),),
    "binary": (("x-client-token-bin", b"\x00\xfe\x01"),),
    "repeated": (("x-client-tag", "a"), ("x-client-tag", "b")),
}


@pytest.mark.parametrize("mode", ["ok", *MODES])
@pytest.mark.parametrize("md", list(CLIENT_MD))
def test_metadata_and_details_pass_through(setup: Setup, mode: str, md: str) -> None:
    outcomes = []
    for addr in (setup.upstream_addr, setup.gateway.grpc_addr):
        with grpc.insecure_channel(addr, options=CLIENT_OPTIONS) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            outcomes.append(grpc_call(stub.Predict, _predict(mode), metadata=CLIENT_MD[md]))
    direct, via = outcomes
    expected = grpc.StatusCode.OK if mode == "ok" else MODES[mode][0]
    assert direct.code == expected
    assert (via.code, via.details) == (direct.code, direct.details)
    assert via.response == direct.response
    assert via.initial == direct.initial
    assert via.trailing == direct.trailing
    assert [k for k in GATEWAY_HEADERS if k not in via.gateway_md] == []
