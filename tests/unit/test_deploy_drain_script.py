"""The TF Serving preStop drain script (deploy/k8s/base/tfserving-drain.yaml), run for real.

The script from the ConfigMap runs under bash against a stand-in for the gateway's admin API on
127.0.0.1 (a real socket, answers shaped as gateway.app.admin writes them, orjson's compact JSON).
The exact request path, the bearer token, waiting for in-flight calls to reach zero, and the
failures that must end the hook early or at its deadline are all checked on the wire.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "tfserving-drain.yaml"
NAME = "tfserving-3"
TOKEN = "drain-test-token-0123456789abcdef"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("bash", "timeout", "getent", "sort")),
    reason="the script needs bash, coreutils and getent, as in the tensorflow/serving image",
)


@dataclass
class FakeAdmin:
    """What one gateway pod's admin API answers. `in_flight` is consumed one value per
    GET /api/replicas, the last one repeating."""

    token: str = TOKEN
    in_flight: list[int] = field(default_factory=lambda: [0])
    drain_statuses: list[int] = field(default_factory=lambda: [200])
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def replicas_body(self) -> bytes:
        n = self.in_flight.pop(0) if len(self.in_flight) > 1 else self.in_flight[0]
        record = {
            "name": NAME,
            "pool": "gpu",
            "healthy": True,
            "routable": False,
            "in_flight": n,
            "latency_ms": 1.5,
            "models": {"half_plus_two": {"1": "AVAILABLE"}},
        }
        # A name that NAME is a prefix of, listed first and busy: must not be read as NAME.
        decoy = {**record, "name": NAME + "0", "in_flight": 7}
        return orjson.dumps({"replicas": [decoy, record]})


@pytest.fixture
def admin() -> Iterator[tuple[FakeAdmin, int]]:
    state = FakeAdmin()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self) -> None:
            auth = self.headers.get("Authorization", "")
            state.requests.append((self.command, self.path, auth))
            if auth != f"Bearer {state.token}":
                self._answer(401, b'{"error":"admin API needs a valid bearer token"}')
            elif self.command == "POST" and self.path == f"/api/replicas/{NAME}/drain":
                status = (
                    state.drain_statuses.pop(0) if len(state.drain_statuses) > 1 else state.drain_statuses[0]
                )
                self._answer(status, b'{"ok":true}' if status == 200 else b'{"error":"no"}')
            elif self.command == "GET" and self.path == "/api/replicas":
                self._answer(200, state.replicas_body())
            else:
                self._answer(404, b"404: Not Found")

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-admin", daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_drain(tmp_path: Path, port: int, wait_s: int = 10) -> tuple[subprocess.CompletedProcess[str], float]:
    cm = yaml.safe_load(SCRIPT.read_text())
    script = tmp_path / "drain.sh"
    script.write_text(cm["data"]["drain.sh"])
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as a Secret file may hold it
    env = {"PATH": "/usr/bin:/bin", "POD_NAME": NAME, "DRAIN_POLL_S": "0.05"}
    argv = ["timeout", "30", "bash", str(script), "127.0.0.1", str(port), str(token_file), str(wait_s)]
    start = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=40)
    return done, time.monotonic() - start


def test_drains_then_waits_for_in_flight_calls(tmp_path: Path, admin: tuple[FakeAdmin, int]) -> None:
    state, port = admin
    state.in_flight = [2, 1, 0]
    done, _ = run_drain(tmp_path, port)
    assert done.returncode == 0, done.stderr
    assert f"{NAME} drained on 1 gateway pod(s)" in done.stdout
    assert state.requests[0] == ("POST", f"/api/replicas/{NAME}/drain", f"Bearer {TOKEN}")
    assert [r[:2] for r in state.requests[1:]] == [("GET", "/api/replicas")] * 3  # drained once


def test_asks_again_when_the_drain_call_fails(tmp_path: Path, admin: tuple[FakeAdmin, int]) -> None:
    state, port = admin
    state.drain_statuses = [503, 200]
    done, _ = run_drain(tmp_path, port)
    assert done.returncode == 0, done.stderr
    assert [r[0] for r in state.requests] == ["POST", "POST", "GET"]


@pytest.mark.parametrize("case", ["wrong-token", "no-drain-endpoint"])
def test_refusals_end_the_hook_at_once(tmp_path: Path, admin: tuple[FakeAdmin, int], case: str) -> None:
    state, port = admin
    if case == "wrong-token":
        state.token = "some-other-token-0123456789"
    else:
        state.drain_statuses = [404]  # a gateway without the endpoint, or a name it does not list
    done, elapsed = run_drain(tmp_path, port)
    assert done.returncode == 1 and elapsed < 5
    assert f"refused to drain {NAME}: HTTP {401 if case == 'wrong-token' else 404}" in done.stderr
    assert len(state.requests) == 1


def test_gives_up_at_its_deadline(tmp_path: Path, admin: tuple[FakeAdmin, int]) -> None:
    state, port = admin
    state.in_flight = [1]
    done, elapsed = run_drain(tmp_path, port, wait_s=1)
    assert done.returncode == 1 and 1 <= elapsed < 5
    assert f"{NAME} still busy after 1s: 0 of 1 gateway pod(s) idle" in done.stderr


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_waits_while_no_gateway_pod_answers(tmp_path: Path) -> None:
    done, elapsed = run_drain(tmp_path, closed_port(), wait_s=1)
    assert done.returncode == 1 and 1 <= elapsed < 5
    assert "0 of 1 gateway pod(s) idle" in done.stderr
