"""What "the same outcome" means for one request sent to a replica and to the gateway.

REST: the HTTP status, the media type and the body (JSON compared as parsed values, with TF
Serving's NaN/Infinity tokens kept distinct and comparable; anything else byte for byte).
gRPC: the status code, the details, the response message (protobuf equality), the trailing
metadata and the initial metadata. The gateway may add only its own x-infergate-* headers and
metadata; those are left out of the comparison and checked on their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tests.integration.gwproc import http

GATEWAY_PREFIX = "x-infergate-"
GATEWAY_HEADERS = ("x-infergate-replica", "x-infergate-version", "x-infergate-cache")


def _json_or_bytes(body: bytes) -> Any:
    try:
        # NaN, Infinity and -Infinity become tagged strings so that equal answers compare equal.
        return json.loads(body, parse_constant=lambda token: f"<{token}>")
    except ValueError:
        return body


@dataclass(frozen=True)
class RestOutcome:
    status: int
    media_type: str
    body: Any

    @classmethod
    def of(cls, status: int, headers: dict[str, str], body: bytes) -> RestOutcome:
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        return cls(status, media, _json_or_bytes(body))


def rest_call(base_url: str, method: str, path: str, body: Any = None, raw: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[RestOutcome, dict[str, str]]:
    status, hdrs, out = http(method, base_url + path, body, headers=dict(headers or {}), raw=raw,
                             timeout=60.0)
    return RestOutcome.of(status, hdrs, out), hdrs


def _user_md(md: Sequence[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in (md or ()) if not k.startswith(GATEWAY_PREFIX))


@dataclass(frozen=True)
class GrpcOutcome:
    code: grpc.StatusCode
    details: str
    response: Any  # a protobuf message, raw bytes, or None on error
    initial: tuple[tuple[str, Any], ...]
    trailing: tuple[tuple[str, Any], ...]
    gateway_md: dict[str, str]  # x-infergate-* initial metadata (not compared)


def grpc_call(fn: Callable[..., Any], request: Any, *, timeout: float | None = 30.0,
              metadata: Sequence[tuple[str, str]] = ()) -> GrpcOutcome:
    """Call a unary stub method (``stub.Predict`` or a raw ``channel.unary_unary``) and record
    everything a client can observe."""
    try:
        response, call = fn.with_call(request, timeout=timeout, metadata=tuple(metadata))
    except grpc.RpcError as err:
        call, response = err, None
    initial = call.initial_metadata() or ()
    gw = {k: str(v) for k, v in initial if k.startswith(GATEWAY_PREFIX)}
    return GrpcOutcome(call.code(), call.details() or "", response, _user_md(initial),
                       _user_md(call.trailing_metadata()), gw)
