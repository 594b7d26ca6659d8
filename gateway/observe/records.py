"""One payload-log record: a sampled call and its answer as one JSON object (the format
`infergate replay` reads back).

    {"time": "2025-01-01T12:00:00.123Z", "protocol": "rest", "method": "predict",
     "model": "m", "version": 2, "label": null, "arm": "stable", "tenant": null,
     "replica": "r0", "cache": "miss", "tier": "primary", "status": 200, "latency_ms": 3.2,
     "request": {"http_method": "POST", "path": "/v1/models/m:predict", "headers": {...},
                 "body": "{...}"},
     "answer": {"status": 200, "headers": {...}, "body": "{...}"}}

A body is text (`body`) when it is UTF-8 and not content-encoded, else base64 (`body_b64`):
gRPC requests and answers are always base64 of the message bytes. A body over `max_bytes` is
cut there and marked `"truncated": true` (replay skips such a record). gRPC requests carry
`path` (the method path) and `metadata` instead of `http_method` and `headers`; a call the
gateway answered itself has `answer.error` (its message) and no body.

What must always hold: a header named in `redact`, and the transport's own headers, never
reach a record; encoding runs in the writer's thread, so it only reads what `Sample` captured
on the event loop.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.core.call import Answer, Call
from gateway.core.errors import GatewayError

# Headers that belong to one hop, to the transport or to one trace, not to the call (never
# logged; a replay's client sets its own).
REST_SKIP = frozenset({
    "connection", "keep-alive", "host", "content-length", "transfer-encoding", "te", "trailer",
    "upgrade", "expect", "proxy-connection", "traceparent", "tracestate",
})
GRPC_SKIP = REST_SKIP | {"grpc-timeout", "grpc-accept-encoding", "grpc-encoding",
                         "content-type", "user-agent", "accept-encoding"}
_TEXT_TYPES = ("application/json", "text/")


@dataclass(slots=True)
class Sample:
    """What the event loop captures of a sampled call: references and a headers copy."""

    wall: float  # time.time() at the answer
    latency_s: float
    call: Call
    headers: dict[str, str]
    result: Answer | GatewayError


def _body(data: bytes, as_text: bool, max_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if len(data) > max_bytes:
        data = data[:max_bytes]
        out["truncated"] = True
    if as_text:
        try:
            out["body"] = data.decode("utf-8")
            return out
        except UnicodeDecodeError:
            pass
    out["body_b64"] = base64.b64encode(data).decode("ascii")
    return out


def body_of(part: dict[str, Any]) -> bytes:
    """The bytes of a record's request or answer."""
    if "body" in part:
        return str(part["body"]).encode("utf-8")
    return base64.b64decode(part.get("body_b64", ""))


def encode(s: Sample, max_bytes: int, redact: frozenset[str]) -> bytes:
    """One JSON line."""
    call, res = s.call, s.result
    grpc = call.protocol == "grpc"
    skip = GRPC_SKIP if grpc else REST_SKIP
    headers = {k: v for k, v in s.headers.items()
               if k not in redact and k not in skip and not k.startswith(":")}
    request: dict[str, Any]
    if grpc:
        request = {"path": str(call.extra), "metadata": headers}
    else:
        req = call.extra
        path = getattr(req, "raw_path", "")
        query = getattr(req, "query", "")
        request = {"http_method": getattr(req, "http_method", "POST"),
                   "path": path + "?" + query if query else path, "headers": headers}
    text = not grpc and "content-encoding" not in headers
    request.update(_body(call.body, text, max_bytes))
    answer: dict[str, Any]
    if isinstance(res, Answer):
        status = res.status
        answer = {"status": status}
        if grpc:
            if res.details:
                answer["details"] = res.details
            answer.update(_body(res.body, False, max_bytes))
        else:
            ah = dict(res.headers)
            answer["headers"] = ah
            plain = ah.get("content-type", "application/json").startswith(_TEXT_TYPES)
            answer.update(_body(res.body, plain and "content-encoding" not in ah, max_bytes))
        version, arm, replica, cache, tier = res.version, res.arm, res.replica, res.cache, res.tier
    else:
        status = res.code.value[0] if grpc else res.http_status
        answer = {"status": status, "error": res.message}
        version, arm, replica, cache, tier = None, "", "", "miss", "primary"
    rec = {
        "time": datetime.fromtimestamp(s.wall, UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "protocol": call.protocol, "method": call.method, "model": call.model,
        "version": version, "label": call.label, "arm": arm or None,
        "tenant": getattr(call, "tenant", "") or None,  # set by admission where tenants exist
        "replica": replica or None, "cache": cache, "tier": tier, "status": status,
        "latency_ms": round(s.latency_s * 1000.0, 3), "request": request, "answer": answer,
    }
    return orjson.dumps(rec) + b"\n"
