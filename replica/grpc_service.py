"""The gRPC surface: tensorflow.serving.PredictionService and ModelService on grpc.aio.

Uses the official servicer bases and registration helpers from tensorflow_serving.apis, so the
method paths and messages are TF Serving's by construction. Errors abort with TF Serving's code
and message (cut at 1024 characters). Metrics follow prediction_service_impl.cc: Predict,
Classify and Regress count in request_count and, when OK, in request_latency (entrypoint "GRPC");
MultiInference, GetModelMetadata and GetModelStatus record nothing there. With an SSLConfig the
port accepts TLS only, built as TF Serving's BuildServerCredentialsFromSSLConfigFile builds it.

What must always hold: a request whose bytes do not parse as the method's message ends with
INTERNAL and empty details, on every method, before any servicer code runs (so it counts in no
metric), as gRPC C++ answers for TF Serving (GenericDeserialize: INTERNAL with the message's
InitializationErrorString(), empty for proto3 messages).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
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

from replica.core import ServingCore, status_proto
from replica.errors import ServingError, invalid_argument
from replica.flags import SslConfig
from replica.inference import (
    make_model_spec,
    prepare_predict,
    run_classify,
    run_multi_inference,
    run_predict,
    run_regress,
)
from replica.servable import Servable
from replica.tensors import as_proto_content, as_proto_field, to_ndarray

log = logging.getLogger("replica.grpc")

MAX_MESSAGE_BYTES = 2**31 - 1
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + float(remaining)


def _predict_blocking(
    servable: Servable, request: predict_pb2.PredictRequest, tensor_content: bool
) -> tuple[predict_pb2.PredictResponse, int]:
    prepared = prepare_predict(
        servable, request.model_spec.signature_name, request.inputs, request.output_filter, to_ndarray
    )
    outputs, runtime_us = run_predict(servable, prepared)
    response = predict_pb2.PredictResponse(
        model_spec=make_model_spec(request.model_spec.name, prepared.signature_name, servable.version)
    )
    encode = as_proto_content if tensor_content else as_proto_field
    for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(encode(array))
    return response, runtime_us


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, core: ServingCore) -> None:
        self._core = core

    async def _infer(
        self,
        api: str,
        spec: model_pb2.ModelSpec | None,
        context: grpc.aio.ServicerContext[Any, Any],
        fn: Callable[[Servable], Any],
        *,
        tf_metrics: bool = True,
    ) -> Any:
        """Resolve, run off-loop, record metrics; abort the RPC on a ServingError."""
        core = self._core
        model = spec.name if spec is not None else ""
        start = time.perf_counter()
        deadline = _deadline(context)
        code = "OK"
        try:
            if spec is None:
                raise invalid_argument("Missing ModelSpec")
            servable = core.resolve(spec)
            response, runtime_us = await core.run(servable, fn, servable, deadline=deadline)
            if tf_metrics:
                core.metrics.record_runtime_latency(model, api, runtime_us)
            return response
        except ServingError as exc:
            code = exc.code_name
            await context.abort(exc.code, exc.grpc_message())
        except asyncio.CancelledError:
            expired = deadline is not None and asyncio.get_running_loop().time() >= deadline
            code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            raise
        except Exception as exc:  # a bug here must still end the RPC with a status and a metric
            log.exception("%s failed", api)
            code = "INTERNAL"
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            core.metrics.record_inference(model, api, "GRPC", code)
            if tf_metrics:
                core.metrics.record_request(model, code)
                if code == "OK":
                    micros = int((time.perf_counter() - start) * 1e6)
                    core.metrics.record_request_latency(model, api, "GRPC", micros)

    async def Predict(self, request: predict_pb2.PredictRequest, context: Any) -> Any:
        spec = request.model_spec if request.HasField("model_spec") else None
        tensor_content = self._core.tensor_content
        return await self._infer(
            "Predict", spec, context, lambda s: _predict_blocking(s, request, tensor_content)
        )

    async def Classify(self, request: classification_pb2.ClassificationRequest, context: Any) -> Any:
        spec = request.model_spec if request.HasField("model_spec") else None
        return await self._infer("Classify", spec, context, lambda s: run_classify(s, request))

    async def Regress(self, request: regression_pb2.RegressionRequest, context: Any) -> Any:
        spec = request.model_spec if request.HasField("model_spec") else None
        return await self._infer("Regress", spec, context, lambda s: run_regress(s, request))

    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context: Any) -> Any:
        # multi_inference_helper.cc: the first task's spec picks the servable; no spec at all
        # resolves as an empty name.
        spec = model_pb2.ModelSpec()
        if request.tasks and request.tasks[0].HasField("model_spec"):
            spec = request.tasks[0].model_spec
        return await self._infer(
            "MultiInference", spec, context, lambda s: run_multi_inference(s, request), tf_metrics=False
        )

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: Any
    ) -> Any:
        try:
            return self._core.metadata(request)
        except ServingError as exc:
            await context.abort(exc.code, exc.grpc_message())


class ModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, core: ServingCore) -> None:
        self._core = core

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context: Any) -> Any:
        try:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            return self._core.status(request.model_spec)
        except ServingError as exc:
            await context.abort(exc.code, exc.grpc_message())

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: Any
    ) -> Any:
        """model_service_impl.cc: only a ModelConfigList can be swapped in."""
        error: ServingError | None = None
        if request.config.WhichOneof("config") != "model_config_list":
            error = invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        else:
            for index, config in enumerate(request.config.model_config_list.config):
                log.info(
                    "Config entry index : %d path : %s name : %s platform : %s",
                    index,
                    config.base_path,
                    config.name,
                    config.model_platform,
                )
            try:
                await self._core.manager.reload_config(request.config)
            except ServingError as exc:
                error = exc
        if error is not None:
            log.error("ReloadConfig failed: %s", error.message)
            await context.abort(error.code, error.grpc_message())
        response = model_management_pb2.ReloadConfigResponse(status=status_proto(None))
        for name in request.metric_names:
            response.metric.add(name=name, int64_value_increase=0)
        return response


class _Unparsable:
    """The request of a call whose bytes did not parse; only the parse guard ever sees it."""

    __slots__ = ()


_UNPARSABLE = _Unparsable()


def _guard_parse(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with a parse failure answered INTERNAL instead of grpc.aio's UNKNOWN.

    grpc.aio deserialises before the servicer runs and maps anything the deserialiser raises to
    UNKNOWN ("Unexpected DecodeError"); no code can be chosen from inside the deserialiser, so it
    hands a marker to the behaviour, which aborts with the code gRPC C++ uses.
    """
    deserialize = handler.request_deserializer
    behaviour = handler.unary_unary
    if deserialize is None or behaviour is None:
        return handler  # TF Serving's methods are all unary; anything else keeps its own handling

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError:
            return _UNPARSABLE

    async def call(request: Any, context: Any) -> Any:
        if request is _UNPARSABLE:
            await context.abort(grpc.StatusCode.INTERNAL, "")
        result: Awaitable[Any] = behaviour(request, context)
        return await result

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=parse, response_serializer=handler.response_serializer
    )


class _ParseGuardedHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come back with the parse guard around them; each
    is wrapped once per method path (a fixed set), not once per call."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._guarded: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        guarded = self._guarded.get(method)
        if guarded is None:
            inner = self._inner.service(handler_call_details)
            if inner is None:
                return None  # unknown method: the server answers UNIMPLEMENTED, as TF Serving
            guarded = self._guarded[method] = _guard_parse(inner)
        return guarded


class _ParseGuardedRegistrar:
    """Stands in for the server when the official add_*Servicer_to_server helpers register their
    handlers, so the method table stays theirs and every method gets the parse guard."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_ParseGuardedHandler(h) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        # Newer generated helpers also register their table this way.
        guarded = {name: _guard_parse(h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, guarded)


def server_credentials(ssl: SslConfig) -> grpc.ServerCredentials:
    """BuildServerCredentialsFromSSLConfigFile (TF Serving's server.cc): one key/cert pair;
    custom_ca as the roots; client_verify requires and verifies a client certificate."""
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() if ssl.custom_ca else None,
        require_client_auth=ssl.client_verify,
    )


def build_server(core: ServingCore, address: str, ssl: SslConfig | None = None) -> grpc.aio.Server:
    """The gRPC server on ``address``: plain, or TLS when an SSLConfig is given (as TF Serving)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    registrar = _ParseGuardedRegistrar(server)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), registrar)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), registrar)
    if ssl is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials(ssl))
    if port == 0:
        raise OSError(f"cannot bind gRPC port at {address}")
    return server
