"""The native REST engine (listen.engine: native) in a real gateway process in front of two real
replicas: TF Serving answers and errors unchanged, the x-infergate headers, keep-alive and
pipelining on one socket, chunked and gzip bodies, Expect: 100-continue, the body limit's 413
with TF Serving's JSON, and the compat engine giving the same answers for the same requests."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import time
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from tests.integration.gwproc import EngineGateway, GatewayProc, http

pytestmark = pytest.mark.integration

BODY = {"instances": [1.0, 2.0, 5.0]}
V2 = [3.5, 4.0, 5.5]


def _cfg(fleet: Fleet) -> dict[str, Any]:
    return {"replicas": fleet.replica_cfg(),
            "models": {"half_plus_two": {"labels": {"stable": 1, "canary": 2},
                                         "routes": [{"split": {"stable": 50, "canary": 50}}],
                                         "sticky": {"header": "x-session-id"},
                                         "balance": "least_loaded"}},
            "limits": {"max_body_bytes": 4096}}


@pytest.fixture(scope="module")
def gws(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Any:
    native = EngineGateway(_cfg(fleet), tmp_path_factory.mktemp("native"), "native")
    compat = EngineGateway(_cfg(fleet), tmp_path_factory.mktemp("compat"), "compat")
    yield native, compat
    native.stop()
    compat.stop()


def _raw(port: int, data: bytes, expect_answers: int = 1, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while out.count(b"HTTP/1.1 2") + out.count(b"HTTP/1.1 4") < expect_answers or \
                not _complete(out, expect_answers):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def _complete(out: bytes, n: int) -> bool:
    """True when `out` holds n complete answers with Content-Length bodies."""
    pos = 0
    for _ in range(n):
        head_end = out.find(b"\r\n\r\n", pos)
        if head_end < 0:
            return False
        head = out[pos:head_end].decode("latin-1").lower()
        length = 0
        for line in head.split("\r\n"):
            if line.startswith("content-length:"):
                length = int(line.split(":")[1])
        pos = head_end + 4 + length
        if pos > len(out):
            return False
    return True


def test_same_answers_as_the_compat_engine(gws: tuple[GatewayProc, GatewayProc]) -> None:
    native, compat = gws
    for method, path, body in [
        ("POST", "/v1/models/half_plus_two/versions/2:predict", BODY),
        ("POST", "/v1/models/half_plus_two/labels/stable:predict", BODY),
        ("GET", "/v1/models/half_plus_two/versions/1", None),
        ("GET", "/v1/models/half_plus_two/versions/1/metadata", None),
        ("POST", "/v1/models/nope:predict", BODY),
        ("POST", "/v1/models/half_plus_two/versions/9:predict", BODY),
        ("POST", "/v1/models/half_plus_two:predict", {"instances": "not a list"}),
        ("POST", "/v1/nothing", BODY),
        ("GET", "/elsewhere", None),
    ]:
        a = http(method, native.rest_url + path, body)
        b = http(method, compat.rest_url + path, body)
        assert a[0] == b[0], path
        assert a[2] == b[2], path
        assert a[1].get("content-type") == b[1].get("content-type"), path
        if path.startswith("/v1/models/half_plus_two"):
            assert a[1]["x-infergate-replica"] in {"r0", "r1"}
            assert a[1]["x-infergate-cache"] == "miss"


def test_split_and_headers(gws: tuple[GatewayProc, GatewayProc]) -> None:
    native, _ = gws
    versions = set()
    for i in range(20):
        status, h, out = http("POST", native.rest_url + "/v1/models/half_plus_two:predict", BODY,
                              {"x-session-id": f"s{i}"})
        assert status == 200
        versions.add(h["x-infergate-version"])
        assert json.loads(out)["predictions"] in ([2.5, 3.0, 4.5], V2)
    assert versions == {"1", "2"}


def test_keep_alive_and_pipelining_on_one_socket(gws: tuple[GatewayProc, GatewayProc]) -> None:
    native, _ = gws
    body = json.dumps(BODY).encode()
    one = (b"POST /v1/models/half_plus_two/versions/2:predict HTTP/1.1\r\nHost: g\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    status = b"GET /v1/models/half_plus_two/versions/1 HTTP/1.1\r\nHost: g\r\n\r\n"
    out = _raw(native.rest_port, one + status + one, expect_answers=3)
    answers = out.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3
    assert b'"predictions"' in answers[0] and b"model_version_status" in answers[1]
    assert b'"predictions"' in answers[2]


def test_chunked_request_body(gws: tuple[GatewayProc, GatewayProc]) -> None:
    native, _ = gws
    body = json.dumps(BODY).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    out = _raw(native.rest_port, b"POST /v1/models/half_plus_two/versions/2:predict HTTP/1.1\r\n"
               b"Host: g\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    assert out.startswith(b"HTTP/1.1 200")
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["predictions"] == V2


def test_gzip_body_passes_through(gws: tuple[GatewayProc, GatewayProc], fleet: Fleet) -> None:
    native, _ = gws
    raw = gzip.compress(json.dumps(BODY).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    path = "/v1/models/half_plus_two/versions/2:predict"
    a = http("POST", native.rest_url + path, raw=raw, headers=headers)
    direct = http("POST", fleet.replicas[0].rest_url + path, raw=raw, headers=headers)
    assert a[0] == direct[0] == 200 and a[2] == direct[2]
    assert json.loads(a[2])["predictions"] == V2


def test_expect_100_continue(gws: tuple[GatewayProc, GatewayProc]) -> None:
    native, _ = gws
    body = json.dumps(BODY).encode()
    with socket.create_connection(("127.0.0.1", native.rest_port), timeout=10) as s:
        s.sendall(b"POST /v1/models/half_plus_two/versions/2:predict HTTP/1.1\r\nHost: g\r\n"
                  b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert s.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        out = b""
        while not _complete(out, 1):
            out += s.recv(65536)
    assert out.startswith(b"HTTP/1.1 200")


def test_body_over_the_limit_is_413_json(gws: tuple[GatewayProc, GatewayProc]) -> None:
    native, _ = gws
    status, h, out = http("POST", native.rest_url + "/v1/models/half_plus_two:predict",
                          raw=b"x" * 5000, headers={"Content-Type": "application/json"})
    assert status == 413 and h["content-type"] == "application/json"
    assert "exceeds the limit of 4096 bytes" in json.loads(out)["error"]


def test_metrics_count_native_calls(gws: tuple[GatewayProc, GatewayProc]) -> None:
    native, _ = gws
    http("POST", native.rest_url + "/v1/models/half_plus_two/versions/2:predict", BODY)
    assert re.search(r'infergate_requests_total\{code="200",model="half_plus_two",'
                     r'protocol="rest",replica="r[01]",version="2"\} [1-9]', native.metrics())


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_polling_serves_calls_then_lets_the_loop_sleep(
        fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> None:
    """listen.busy_poll_us: calls are answered as usual; once they stop, the loop goes back to
    sleeping after the window instead of polling for ever (an idle gateway costs no core)."""
    gw = EngineGateway(_cfg(fleet), tmp_path_factory.mktemp("busy"), "native", name="busy",
                       busy_poll_us=20_000)
    try:
        for i in range(20):
            status, h, _ = http("POST", gw.rest_url + "/v1/models/half_plus_two:predict", BODY,
                                {"x-session-id": f"s{i}"})
            assert status == 200 and h["x-infergate-replica"] in {"r0", "r1"}
        time.sleep(0.2)  # past the 20 ms window
        before = _cpu_s(gw.pid)
        time.sleep(2.0)
        idle_cpu = _cpu_s(gw.pid) - before
        # Polling would burn the whole 2 s; a sleeping loop only runs its health checks.
        assert idle_cpu < 0.5, f"{idle_cpu:.2f} s of CPU in 2 s without calls"
    finally:
        gw.stop()


def test_compat_engine_counts_malformed_requests_without_a_traceback(
        gws: tuple[GatewayProc, GatewayProc]) -> None:
    _, compat = gws
    for data in (b"GET /v1/models/x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
                 b"POST /v1/models/x:predict HTTP/1.1\r\nContent-Length: x\r\n\r\n"):
        assert _raw(compat.rest_port, data).startswith(b"HTTP/1.0 400")
    assert re.search(r'infergate_gateway_errors_total\{kind="BadRequest",protocol="rest"\} '
                     r'[2-9]', compat.metrics())
    log = compat.log_path.read_text(errors="replace")
    assert "BadHttpMessage" not in log and "Traceback" not in log
