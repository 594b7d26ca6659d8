"""REST conformance: every case goes to the replica and to the gateway, and both answers must match.

Each case names the status TF Serving gives, so two equally wrong answers still fail. Bodies
are compared as parsed JSON (tests/conformance/outcome.py); the gateway's own x-infergate-*
headers are checked separately on every answer it gives under /v1/.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from tensorflow.core.example import example_pb2

from tests.conformance.conftest import Pair
from tests.conformance.outcome import GATEWAY_HEADERS, rest_call

pytestmark = pytest.mark.integration

M = "/v1/models/half_plus_two"
ROWS = {"instances": [1.0, 2.0, 5.0]}


def tf_example(pad: bytes = b"", **features: float) -> bytes:
    ex = example_pb2.Example()
    for name, value in features.items():
        ex.features.feature[name].float_list.value.append(value)
    if pad:  # a feature no signature parses: size without work
        ex.features.feature["pad"].bytes_list.value.append(pad)
    return ex.SerializeToString()


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


@dataclass(frozen=True)
class RestCase:
    method: str
    path: str
    expect: int
    body: Any = None  # JSON-encoded
    raw: bytes | None = None  # sent as is
    headers: dict[str, str] = field(default_factory=dict)
    known_bug: tuple[str, str] | None = None  # (engine, reason): xfail strictly on that engine


def case(id: str, method: str, path: str, expect: int, body: Any = None, marks: Any = (),
         **kw: Any) -> Any:
    return pytest.param(RestCase(method, path, expect, body, **kw), id=id, marks=marks)


# The compat engine: gateway/app.py builds the REST listener as web.Server(handler) with
# aiohttp's default auto_decompress=True. The body is inflated on the way in but forwarded with
# its "Content-Encoding: gzip" header, so the replica inflates plain JSON, reads an empty document
# and answers 400; a body that is not gzip at all makes aiohttp raise and the gateway answer 500.
# Fix: web.Server(..., auto_decompress=False), so the bytes travel as sent (as the native engine
# does).

def big_body() -> dict[str, Any]:
    """A ~10 MB predict body: one base64 tf.Example carrying 7.5 MB of padding. (Ten megabytes of
    JSON numbers would take the replica's JSON layer tens of seconds; this is the same size on
    the wire for the gateway, and gRPC carries 10 MB tensors both ways.)"""
    return {"signature_name": "regress_x_to_y",
            "instances": [b64(tf_example(pad=b"\x07" * 7_500_000, x=80.0))]}


CASES = [
    # predict, both forms, versions and labels
    case("predict-rows-latest", "POST", f"{M}:predict", 200, ROWS),
    case("predict-columnar", "POST", f"{M}:predict", 200, {"inputs": [1.0, 2.0]}),
    case("predict-columnar-named", "POST", f"{M}:predict", 200, {"inputs": {"x": [[1.0], [2.0]]}}),
    case("predict-rows-named", "POST", f"{M}:predict", 200, {"instances": [{"x": 1.0}, {"x": 4.0}]}),
    case("predict-signature", "POST", f"{M}:predict", 200,
         {"signature_name": "serving_default", "instances": [3.0]}),
    case("predict-version-1", "POST", f"{M}/versions/1:predict", 200, ROWS),
    case("predict-version-2", "POST", f"{M}/versions/2:predict", 200, ROWS),
    case("predict-label-stable", "POST", f"{M}/labels/stable:predict", 200, ROWS),
    case("predict-label-canary", "POST", f"{M}/labels/canary:predict", 200, ROWS),
    case("predict-two-outputs", "POST", "/v1/models/embed:predict", 200,
         {"signature_name": "with_norm", "instances": [[3.0, 4.0, 0.0, 0.0]]}),
    case("predict-two-outputs-columnar", "POST", "/v1/models/embed:predict", 200,
         {"signature_name": "with_norm", "inputs": {"x": [[3.0, 4.0, 0.0, 0.0]]}}),
    case("predict-b64", "POST", f"{M}/versions/1:predict", 200,
         {"signature_name": "regress_x_to_y", "instances": [b64(tf_example(x=80.0))]}),
    case("predict-b64-bad", "POST", f"{M}:predict", 400,
         {"signature_name": "regress_x_to_y", "instances": [{"b64": "!!not base64!!"}]}),
    case("predict-nan", "POST", f"{M}:predict", 200,
         raw=b'{"instances": [NaN, Infinity, -Infinity]}'),
    case("predict-gzip", "POST", f"{M}:predict", 200, raw=gzip.compress(json.dumps(ROWS).encode()),
         headers={"Content-Encoding": "gzip"}),
    case("predict-gzip-label", "POST", f"{M}/labels/stable:predict", 200,
         raw=gzip.compress(json.dumps(ROWS).encode()), headers={"Content-Encoding": "gzip"},),
    case("predict-gzip-corrupt", "POST", f"{M}:predict", 400, raw=b"not gzip at all",
         headers={"Content-Encoding": "gzip"}),
    case("predict-10mb", "POST", f"{M}/versions/1:predict", 200, big_body()),
    # classify / regress
    case("classify", "POST", f"{M}:classify", 200,
         {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}),
    case("classify-label", "POST", f"{M}/labels/stable:classify", 200,
         {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}),
    case("regress", "POST", f"{M}:regress", 200,
         {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}),
    case("regress-version-1-context", "POST", f"{M}/versions/1:regress", 200,
         {"signature_name": "regress_x_to_y2", "context": {"x2": 1.0},
          "examples": [{"x": 80.0}, {"x": 2.0}]}),
    case("regress-no-examples", "POST", f"{M}:regress", 400, {"signature_name": "regress_x_to_y"}),
    # metadata and status
    case("metadata", "GET", f"{M}/metadata", 200),
    case("metadata-version", "GET", f"{M}/versions/1/metadata", 200),
    case("metadata-label", "GET", f"{M}/labels/stable/metadata", 200),
    case("metadata-unknown-model", "GET", "/v1/models/nope/metadata", 404),
    case("status", "GET", M, 200),
    case("status-version", "GET", f"{M}/versions/1", 200),
    case("status-label-ignored", "GET", f"{M}/labels/canary", 200),
    case("status-unknown-label-ignored", "GET", f"{M}/labels/nolabel", 200),
    case("status-unknown-model", "GET", "/v1/models/nope", 404),
    case("status-unknown-version", "GET", f"{M}/versions/9", 404),
    case("status-no-model-name", "GET", "/v1/models", 400),
    # unknown model / version / label
    case("predict-unknown-model", "POST", "/v1/models/nope:predict", 404, ROWS),
    case("predict-unknown-version", "POST", f"{M}/versions/9:predict", 404, ROWS),
    case("predict-unknown-label", "POST", f"{M}/labels/nolabel:predict", 400, ROWS),
    case("classify-unknown-model", "POST", "/v1/models/nope:classify", 404,
         {"examples": [{"x": 2.0}]}),
    # bad requests
    case("malformed-json", "POST", f"{M}:predict", 400, raw=b'{"instances": [1.0,'),
    case("json-not-object", "POST", f"{M}:predict", 400, raw=b"[1.0, 2.0]"),
    case("empty-body", "POST", f"{M}:predict", 400, raw=b""),
    case("both-forms", "POST", f"{M}:predict", 400, {"instances": [1.0], "inputs": [1.0]}),
    case("wrong-shape-ragged", "POST", f"{M}:predict", 400, {"instances": [[1.0, 2.0], [3.0]]}),
    case("wrong-shape-columnar", "POST", f"{M}:predict", 400, {"inputs": [[1.0, 2.0], [3.0]]}),
    case("wrong-shape-rows-mixed", "POST", f"{M}:predict", 400, {"instances": [1.0, [2.0]]}),
    case("wrong-type", "POST", f"{M}:predict", 400, {"instances": ["a", "b"]}),
    case("unknown-signature", "POST", f"{M}:predict", 400,
         {"signature_name": "nope", "instances": [1.0]}),
    # paths
    case("path-case-insensitive", "POST", "/V1/MODELS/half_plus_two/VERSIONS/1:predict", 200, ROWS),
    case("path-verb-uppercase", "POST", f"{M}:PREDICT", 400, ROWS),
    case("path-metadata-uppercase", "GET", f"{M}/METADATA", 200),
    case("path-escaped-name", "POST", "/v1/models/half%5Fplus%5Ftwo:predict", 200, ROWS),
    case("path-escaped-label", "POST", f"{M}/labels/st%61ble:predict", 200, ROWS),
    case("path-escaped-not-utf8", "POST", "/v1/models/half%ffplus:predict", 404, ROWS),
    case("path-escaped-slash", "GET", "/v1/models/half%2Fplus", 404),
    case("path-version-overflow", "POST", f"{M}/versions/99999999999999999999:predict", 400, ROWS),
    case("status-trailing-slash", "GET", f"{M}/", 400),
    case("metadata-trailing-slash", "GET", f"{M}/metadata/", 400),
    case("path-query", "POST", f"{M}:predict?debug=1", 400, ROWS),
    case("path-status-query", "GET", f"{M}?debug=1", 404),
    case("path-unknown-under-v1", "POST", "/v1/nothing", 400, ROWS),
    case("path-unknown-verb", "POST", f"{M}:explain", 400, ROWS),
    case("path-get-predict", "GET", f"{M}:predict", 400),
    case("path-put", "PUT", f"{M}:predict", 400, ROWS),
    case("path-delete", "DELETE", M, 400),
    case("path-head", "HEAD", M, 400),
    case("path-options-no-origin", "OPTIONS", f"{M}:predict", 400),
    case("path-options-origin", "OPTIONS", f"{M}:predict", 200,
         headers={"Origin": "http://example.com"}),
    case("path-version-not-numeric", "POST", f"{M}/versions/x:predict", 400, ROWS),
    case("outside-v1-root", "GET", "/", 404),
    case("outside-v1-v2", "POST", "/v2/models/half_plus_two:predict", 404, ROWS),
]


@pytest.mark.parametrize("c", CASES)
def test_rest_same_outcome(pair: Pair, c: RestCase, request: pytest.FixtureRequest) -> None:
    if c.known_bug is not None and c.known_bug[0] == pair.engine:
        request.applymarker(pytest.mark.xfail(strict=True, reason=c.known_bug[1]))
    direct, _ = rest_call(pair.direct.rest_url, c.method, c.path, c.body, c.raw, c.headers)
    via, headers = rest_call(pair.via.rest_url, c.method, c.path, c.body, c.raw, c.headers)
    assert direct.status == c.expect, direct
    assert via == direct
    if c.path.lower().startswith("/v1/"):
        missing = [h for h in GATEWAY_HEADERS if h not in headers]
        assert not missing, f"gateway answer lacks {missing}"


def test_rest_answer_names_the_resolved_version(pair: Pair) -> None:
    """Without a version the gateway sends the latest (2) and says so; a label names its version."""
    _, headers = rest_call(pair.via.rest_url, "POST", f"{M}:predict", ROWS)
    assert headers["x-infergate-version"] == "2"
    _, headers = rest_call(pair.via.rest_url, "POST", f"{M}/labels/stable:predict", ROWS)
    assert headers["x-infergate-version"] == "1"
    # An escaped name or label is the same model and label once unescaped, as in TF Serving.
    escaped = "/v1/models/half%5Fplus%5Ftwo/labels/st%61ble:predict"
    _, headers = rest_call(pair.via.rest_url, "POST", escaped, ROWS)
    assert headers["x-infergate-version"] == "1"
