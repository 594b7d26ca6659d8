"""The REST surface on aiohttp, dispatched as TF Serving's http_server.cc and
http_rest_api_handler.cc dispatch.

- Paths are matched case-insensitively on the raw path (query included); anything under /v1/
  that is not an API call is 400 "Malformed request: <METHOD> <path>", anything outside /v1/ is
  an empty 404. Only the lowercase verbs (":predict") and "/metadata" select those handlers, as
  in TF Serving, whose regexes are case-insensitive but whose comparisons are not.
- Bodies with "gzip" in Content-Encoding are inflated (100 MiB cap); a body that fails to inflate
  reads as empty. Content-Type is not checked.
- Every /v1/ answer is application/json; errors are {"error": "<message>"} with TF Serving's
  HTTP status for the code; every /v1/ call counts in request_count (model "" when unparsed).
- Also served: the Prometheus page (when monitoring is on) and /infergate/knobs (test knobs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    model_pb2,
    regression_pb2,
)

from replica.core import ServingCore
from replica.errors import ServingError, invalid_argument
from replica.inference import DEFAULT_SIGNATURE, prepare_predict, run_classify, run_predict, run_regress
from replica.json_examples import classify_json, examples_input, regress_json
from replica.json_tensor import error_json, predict_inputs, predict_json, signature_name
from replica.proto_json import message_to_json
from replica.rapidjson import parse_json
from replica.servable import Servable

log = logging.getLogger("replica.rest")

# re.ASCII: RE2's \d and case folding are ASCII-only.
_API_PATH = re.compile(r"(?i)/v1/.*", re.ASCII)
_PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.ASCII,
)
_STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.ASCII,
)
_MAX_GZIP_BYTES = 100 * 1024 * 1024
_INT64_MAX = 2**63 - 1
KNOBS_PATH = "/infergate/knobs"
_JSON = "application/json"


def _inflate(body: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, _MAX_GZIP_BYTES)
    except zlib.error:
        return b""
    if inflater.unconsumed_tail:
        return b""  # over the cap: TF Serving drops such a body
    return out


def _unescape(text: str) -> str:
    """curl_easy_unescape: %XX sequences only ('+' stays '+'). Bytes that are not UTF-8 become
    U+FFFD: such a name matches no model (404), and the message stays printable JSON."""
    return urllib.parse.unquote(text, errors="replace")


class RestApi:
    def __init__(
        self,
        core: ServingCore,
        *,
        timeout_ms: int,
        cors: bool,
        prometheus_path: str | None,
    ) -> None:
        self._core = core
        self._timeout_ms = timeout_ms
        self._cors = cors
        self._prometheus_path = prometheus_path

    def app(self) -> web.Application:
        app = web.Application(client_max_size=2**31 - 1)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path
        if self._prometheus_path is not None and raw_path == self._prometheus_path:
            text = self._core.metrics.render(self._core.knobs)
            return web.Response(body=text.encode(), headers={"Content-Type": "text/plain"})
        if request.path == KNOBS_PATH:
            return await self._knobs(request)
        if not _API_PATH.fullmatch(raw_path):
            return web.Response(status=404)
        return await self._api(request, raw_path)

    async def _knobs(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = json.loads(await request.read() or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("knobs must be a JSON object")
                self._core.knobs = self._core.knobs.updated(changes)
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
        elif request.method != "GET":
            return web.json_response({"error": "use GET or POST"}, status=405)
        return web.json_response(self._core.knobs.as_dict())

    def _headers(self, json_body: bool) -> dict[str, str]:
        headers = {"Content-Type": _JSON} if json_body else {}
        if self._cors:
            headers.update(
                {
                    "Access-Control-Allow-Origin": "*",
                    "Access-Control-Allow-Methods": "POST, GET",
                    "Access-Control-Allow-Headers": "Content-Type",
                }
            )
        return headers

    async def _api(self, request: web.Request, raw_path: str) -> web.Response:
        start = time.perf_counter()
        body = await request.read()
        if "gzip" in request.headers.get("Content-Encoding", ""):
            body = _inflate(body)
        http_method = request.method
        if http_method == "OPTIONS":
            origin_ok = re.search(r"https?://", request.headers.get("Origin", "")) is not None
            code = "OK" if origin_ok else "FAILED_PRECONDITION"
            self._core.metrics.record_request("", code)
            return web.Response(status=200 if origin_ok else 400, headers=self._headers(False))
        parsed = {"model": "", "verb": ""}
        error: ServingError | None = None
        try:
            output = await self._dispatch(http_method, raw_path, body, parsed)
        except ServingError as exc:
            error = exc
            output = error_json(exc.message)
        except Exception as exc:  # a bug here must still answer in TF Serving's error shape
            log.exception("REST %s %s failed", http_method, raw_path)
            error = ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            output = error_json(error.message)
        model_name, verb = parsed["model"], parsed["verb"]
        code = error.code_name if error is not None else "OK"
        metrics = self._core.metrics
        if verb in ("predict", "classify", "regress"):
            metrics.record_inference(model_name, verb, "REST", code)
        if error is None:
            micros = int((time.perf_counter() - start) * 1e6)
            metrics.record_request_latency(model_name, verb, "REST", micros)
        metrics.record_request(model_name, code)
        status = 200 if error is None else error.http_status
        return web.Response(
            status=status,
            body=output.encode("utf-8", "surrogateescape"),
            headers=self._headers(True),
        )

    async def _dispatch(self, http_method: str, raw_path: str, body: bytes, parsed: dict[str, str]) -> str:
        """HttpRestApiHandler::ProcessRequest: the JSON answer; ``parsed`` gets model and verb."""
        malformed = invalid_argument(f"Malformed request: {http_method} {raw_path}")
        if http_method == "POST":
            match = _PREDICT_PATH.fullmatch(raw_path)
        elif http_method == "GET":
            match = _STATUS_PATH.fullmatch(raw_path)
        else:
            match = None
        name = _unescape(match.group(1)) if match and match.group(1) else ""
        parsed["model"] = name
        if http_method == "POST" and match:
            parsed["verb"] = match.group(4)
        version: int | None = None
        label: str | None = None
        if match and match.group(2):
            version = int(match.group(2))
            if version > _INT64_MAX:
                raise invalid_argument(f"Failed to convert version: {match.group(2)} to numeric.")
        if match and match.group(3):
            label = _unescape(match.group(3))
        spec = model_pb2.ModelSpec(name=name)
        if version is not None:
            spec.version.value = version
        if label is not None:
            spec.version_label = label
        if match is None:
            raise malformed
        verb_or_sub = match.group(4) or ""
        if http_method == "POST":
            handlers: dict[str, Callable[[model_pb2.ModelSpec, bytes], Awaitable[str]]] = {
                "predict": self._predict,
                "classify": self._classify,
                "regress": self._regress,
            }
            handler = handlers.get(verb_or_sub)
            if handler is None:
                raise malformed
            return await handler(spec, body)
        if not name:
            raise invalid_argument("Missing model name in request.")
        if verb_or_sub == "metadata":
            return self._metadata(spec)
        return message_to_json(self._core.status(spec))

    def _deadline(self) -> float | None:
        if self._timeout_ms <= 0:
            return None
        return asyncio.get_running_loop().time() + self._timeout_ms / 1000.0

    async def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        deadline = self._deadline()
        doc = parse_json(body)
        signame = signature_name(doc)
        servable = self._core.resolve(spec)
        lookup = signame or DEFAULT_SIGNATURE
        if lookup not in servable.signatures:
            raise invalid_argument(f'Serving signature name: "{lookup}" not found in signature def')
        signature = servable.signatures[lookup]

        def blocking(s: Servable) -> tuple[str, int]:
            inputs, row_format = predict_inputs(doc, signature, signame)
            prepared = prepare_predict(s, signame, inputs)
            outputs, runtime_us = run_predict(s, prepared)
            return predict_json(outputs, row_format), runtime_us

        text, runtime_us = await self._core.run(servable, blocking, servable, deadline=deadline)
        self._core.metrics.record_runtime_latency(spec.name, "Predict", runtime_us)
        return text

    async def _examples_call(
        self, spec: model_pb2.ModelSpec, body: bytes, request: Any, run: Callable[..., Any], api: str
    ) -> Any:
        deadline = self._deadline()
        doc = parse_json(body)
        spec.signature_name = signature_name(doc)
        request.model_spec.CopyFrom(spec)
        request.input.CopyFrom(examples_input(doc))
        servable = self._core.resolve(spec)
        response, runtime_us = await self._core.run(servable, run, servable, request, deadline=deadline)
        self._core.metrics.record_runtime_latency(spec.name, api, runtime_us)
        return response.result

    async def _classify(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        request = classification_pb2.ClassificationRequest()
        result = await self._examples_call(spec, body, request, run_classify, "Classify")
        return classify_json(result)

    async def _regress(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        request = regression_pb2.RegressionRequest()
        result = await self._examples_call(spec, body, request, run_regress, "Regress")
        return regress_json(result)

    def _metadata(self, spec: model_pb2.ModelSpec) -> str:
        """ToJsonString(GetModelMetadataResponse): TF Serving glues two JSON prints together."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.CopyFrom(spec)
        response = self._core.metadata(request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if not response.metadata["signature_def"].Unpack(signature_map):
            raise ServingError(
                grpc.StatusCode.INTERNAL, "Failed to unpack 'Any' object to 'SignatureDefMap'."
            )
        model_spec = message_to_json(response.model_spec, preserve_proto_field_names=True)
        signatures = message_to_json(signature_map, preserve_proto_field_names=True)
        return f'{{\n"model_spec":{model_spec},\n"metadata": {{"signature_def": {signatures}}}\n}}\n'
