"""REST fuzzing: arbitrary paths, methods, headers and bodies against the gateway's 8501 surface.

Properties, for every request:
- the gateway answers (no dropped connection) and never with a 5xx of its own (a 5xx must be a
  replica's answer relayed, which names the replica in x-infergate-replica), except the 504 of a
  call that asked for no time at all (x-infergate-timeout-ms: 0);
- an error the gateway makes itself under /v1/ is TF Serving's shape: JSON {"error": "..."}
  (for request lines the HTTP parser accepts);
- the gateway answers what the replica answers when asked directly (same status; same error
  body), for requests that use no gateway-only header;
- the gateway stays up and its resident memory stays flat over the run (after a warm-up).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import RawAnswer, raw_request, rss_kib
from tests.integration.gwproc import GatewayProc
from tests.support.procs import ReplicaProc

pytestmark = pytest.mark.integration

WARMUP = 300
CASES = 1500
DIFF_CASES = 400
RSS_SLACK_KIB = 30 * 1024

MODELS = ["half_plus_two", "embed", "HALF_PLUS_TWO", "nope", "half_plus_two ", "a%2Fb", ""]
SELECTORS = ["", "/versions/1", "/versions/2", "/versions/9", "/versions/0", "/versions/-1",
             "/versions/99999999999999999999", "/versions/", "/versions/x", "/labels/stable",
             "/labels/canary", "/labels/none", "/labels/", "/Labels/Stable", "/versions/1/labels/x"]
VERBS = ["", ":predict", ":classify", ":regress", "/metadata", ":PREDICT", ":Predict", ":nope",
         ":", "/metadata:predict", ":predict/x", ":predict:predict"]
PATH_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f")
GATEWAY_ONLY = "x-infergate-timeout-ms"


model_names = st.one_of(st.sampled_from(MODELS), st.text(PATH_CHARS, min_size=1, max_size=24))
tf_paths = st.builds(lambda p, m, s, v: f"{p}models/{m}{s}{v}",
                     st.sampled_from(["/v1/", "/V1/", "/v1//", "/v2/"]), model_names,
                     st.sampled_from(SELECTORS), st.sampled_from(VERBS))
junk_paths = st.one_of(
    st.builds(lambda t: "/" + t, st.text(PATH_CHARS, max_size=60)),
    st.builds(lambda t: "/v1/" + t, st.text(PATH_CHARS, max_size=60)),
    st.sampled_from(["/v1/models", "/v1/models/", "/v1", "/", "*", "/v1/models/half_plus_two?x=1",
                     "/v1/models/half_plus_two:predict?%zz", "http://h/v1/models/embed"]),
)
paths = st.one_of(tf_paths, tf_paths, junk_paths).map(lambda p: p.encode("latin-1"))

methods = st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])

token = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                              exclude_characters='()<>@,;:\\"/[]?={}'), min_size=1, max_size=20)
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                     exclude_characters="\x7f"), max_size=40).map(str.strip)
RESERVED = {"host", "content-length", "connection", "transfer-encoding", "expect", "upgrade"}
known_headers = st.one_of(
    st.tuples(st.just("content-type"), st.sampled_from(
        ["application/json", "text/plain", "application/x-protobuf", "", "multipart/form-data"])),
    st.tuples(st.just("content-encoding"), st.sampled_from(["gzip", "deflate", "br", "x", ""])),
    st.tuples(st.just("x-priority"), st.sampled_from(["sheddable", "critical", "standard", "?"])),
    st.tuples(st.just("cache-control"), st.sampled_from(["no-cache", "max-age=0", ""])),
    st.tuples(st.just("x-api-key"), header_value),
    st.tuples(st.just("x-session-id"), header_value),
    st.tuples(st.just("accept-encoding"), st.sampled_from(["gzip", "identity", "*"])),
)
random_headers = st.tuples(token, header_value).filter(lambda kv: kv[0].lower() not in RESERVED)
headers = st.lists(st.one_of(known_headers, random_headers), max_size=6)
timeout_header = st.tuples(st.just(GATEWAY_ONLY),
                           st.sampled_from(["5000", "0", "-1", "1e9", "nan", "inf", "x", ""]))

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.integers(-(2**70), 2**70))
scalars = st.one_of(numbers, st.text(max_size=10), st.booleans(), st.none(),
                    st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, st.binary(max_size=12)))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12)
predict_bodies = st.one_of(
    st.builds(lambda v: {"instances": v}, st.lists(numbers, max_size=5)),
    st.builds(lambda v: {"instances": v}, json_values),
    st.builds(lambda v: {"inputs": v}, json_values),
    st.builds(lambda s, v: {"signature_name": s, "instances": v},
              st.sampled_from(["serving_default", "regress_x_to_y", "nope", ""]), json_values),
    st.builds(lambda v: {"examples": v, "signature_name": "classify_x_to_y"}, json_values),
    st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    json_values,
)


def _dumps(v: Any) -> bytes:
    return json.dumps(v, allow_nan=True).encode()


bodies = st.one_of(
    st.just(b""),
    predict_bodies.map(_dumps),
    predict_bodies.map(_dumps).map(gzip.compress),  # gzip bytes without the header saying so
    st.binary(max_size=200),
    predict_bodies.map(_dumps).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
)

requests = st.tuples(methods, paths, headers, bodies)


def no_time_left(extra: tuple[str, str] | None) -> bool:
    """The call asked for a deadline already past (x-infergate-timeout-ms <= 0, or NaN)."""
    if extra is None:
        return False
    try:
        ms = float(extra[1])
    except ValueError:
        return False
    return not ms > 0


def check_answer(answer: RawAnswer, path: bytes, extra: tuple[str, str] | None,
                 direct: Callable[[], RawAnswer]) -> None:
    """A relayed answer (it names the replica) is the replica's business: the differential test
    compares those. An answer of the gateway's own must be a 4xx in TF Serving's shape, or the
    504 a call with no time left deserves. A 400 that is not JSON is accepted only when the
    replica answers the same request with the same bytes: the HTTP layer both use refused it
    (raw non-ASCII in the request line, a duplicated Content-Type) before any TF Serving logic."""
    if answer.headers.get("x-infergate-replica"):
        return
    if answer.status >= 500:
        assert answer.status == 504 and no_time_left(extra), \
            f"the gateway's own {answer.status}: {answer.body[:300]!r}"
    if answer.status >= 400 and path.lower().startswith(b"/v1/"):
        try:
            data = json.loads(answer.body)
        except ValueError:
            same = direct()
            assert (answer.status, answer.body) == (same.status, same.body), (answer, same)
            return
        assert isinstance(data, dict) and isinstance(data.get("error"), str), answer.body[:300]


def send(port: int, req: tuple[str, bytes, list[tuple[str, str]], bytes]) -> RawAnswer:
    method, path, hdrs, body = req
    return raw_request(port, method, path, hdrs, body)


def test_rest_fuzz_no_gateway_5xx_and_flat_memory(gateway: GatewayProc,
                                                  replica: ReplicaProc) -> None:
    port = gateway.rest_port

    def run(n: int) -> None:
        @settings(max_examples=n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(requests, st.one_of(st.none(), timeout_header))
        def case(req: tuple[str, bytes, list[tuple[str, str]], bytes],
                 extra: tuple[str, str] | None) -> None:
            method, path, hdrs, body = req
            full = (method, path, hdrs + ([extra] if extra else []), body)
            answer = send(port, full)
            check_answer(answer, path, extra, lambda: send(replica.rest_port, full))

        case()

    run(WARMUP)
    before = rss_kib(gateway.pid)
    run(CASES)
    after = rss_kib(gateway.pid)
    print(f"\n[fuzz] REST: {WARMUP} warm-up + {CASES} cases, gateway RSS {before // 1024} MiB -> "
          f"{after // 1024} MiB ({(after - before) / 1024:+.1f} MiB)")
    assert gateway.proc.poll() is None, gateway.log()[-3000:]
    assert after - before < RSS_SLACK_KIB


def refused_by_http_layer(answer: RawAnswer) -> bool:
    """The replica's HTTP server refused the request before any TF Serving logic (a plain-text
    400): the bytes of such an answer are that server's, not part of TF Serving's contract."""
    return answer.status == 400 and not answer.headers.get("content-type", "").startswith(
        "application/json")


def test_rest_fuzz_same_answer_as_the_replica(gateway: GatewayProc, replica: ReplicaProc) -> None:
    """Differential: the gateway is a drop-in, so it answers what the replica answers: the same
    status and, under /v1/, the same error body. Where the replica's HTTP server (aiohttp, stricter than
    TF Serving's) refused the request outright (raw non-ASCII in the path, a duplicated
    Content-Type), the gateway may refuse it its own way or serve it, but not fail it."""

    @settings(max_examples=DIFF_CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests)
    def case(req: tuple[str, bytes, list[tuple[str, str]], bytes]) -> None:
        via = send(gateway.rest_port, req)
        direct = send(replica.rest_port, req)
        if refused_by_http_layer(direct):  # a stricter HTTP parser than TF Serving's own
            assert via.status < 500, (via, direct)
            return
        assert via.status == direct.status, (via, direct)
        # Outside /v1/ TF Serving promises a plain 404 and no particular body.
        if direct.status >= 400 and req[1].lower().startswith(b"/v1/"):
            assert via.body == direct.body, (via, direct)

    case()
