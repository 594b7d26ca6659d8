"""The TF Serving preStop drain script (deploy/k8s/base/tfserving-drain.yaml), run for real.

The script from the ConfigMap runs under bash against a stand-in for the gateway's admin API on
127.0.0.1 (a real socket, answers shaped as gateway.app.admin writes them, orjson's compact JSON).
The exact request path, the bearer token, waiting for in-flight calls to reach zero, and the
failures that must end the hook early or at its deadline are all checked on the wire. The replica
name is built from the pod's IP as the gateway's DNS discovery names it (tfserving-<IP>, IPv6 ':'
as '-'); tests/unit/test_deploy_manifests.py checks it against gateway.fleet.discovery itself.
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
POD_IP = "10.0.0.7"
NAME = "tfserving-10.0.0.7"  # what the gateway's discovery calls the pod at POD_IP
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
    name: str = NAME  # the replica this gateway pod lists and drains
    listed: list[bool] = field(default_factory=lambda: [True])  # per GET, the last one repeating

    def replicas_body(self) -> bytes:
        n = self.in_flight.pop(0) if len(self.in_flight) > 1 else self.in_flight[0]
        listed = self.listed.pop(0) if len(self.listed) > 1 else self.listed[0]
        record = {
            "name": self.name,
            "pool": "gpu",
            "healthy": True,
            "routable": False,
            "in_flight": n,
            "latency_ms": 1.5,
            "models": {"half_plus_two": {"1": "AVAILABLE"}},
        }
        # A name that NAME is a prefix of, listed first and busy: must not be read as NAME.
        decoy = {**record, "name": self.name + "0", "in_flight": 7}
        discovery = {
            "name": "tfserving",
            "type": "dns",
            "query": "tfserving.infergate.svc.cluster.local",
            "addresses": ["10.0.0.70", POD_IP],
            "stale": False,
        }
        replicas = [decoy, record] if listed else [decoy]
        return orjson.dumps({"replicas": replicas, "discovery": [discovery]})


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
            elif self.command == "POST" and self.path == f"/api/replicas/{state.name}/drain":
                status = (
                    state.drain_statuses.pop(0) if len(state.drain_statuses) > 1 else state.drain_statuses[0]
                )
                body = {
                    200: b'{"replica":"%s","draining":true}' % state.name.encode(),
                    404: b"404: Not Found",
                }.get(status, b'{"error":"no"}')  # 404: no drain endpoint
                self._answer(status, body)
            elif self.command == "POST" and self.path.startswith("/api/replicas/"):
                # As gateway.app.admin answers a name it does not list.
                name = self.path.split("/")[3]
                self._answer(404, orjson.dumps({"error": f"no replica named {name!r}"}))
            elif self.command == "GET" and self.path == "/api/replicas":
                self._answer(200, state.replicas_body())
            else:
                self._answer(404, b"404: Not Found")  # aiohttp's answer to an unknown path

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


def script_file(tmp_path: Path) -> Path:
    cm = yaml.safe_load(SCRIPT.read_text())
    script = tmp_path / "drain.sh"
    script.write_text(cm["data"]["drain.sh"])
    return script


def run_drain(
    tmp_path: Path, port: int, wait_s: int = 10, pod_ip: str | None = POD_IP
) -> tuple[subprocess.CompletedProcess[str], float]:
    script = script_file(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as a Secret file may hold it
    env = {"PATH": "/usr/bin:/bin", "REPLICA_PREFIX": "tfserving", "DRAIN_POLL_S": "0.05"}
    if pod_ip is not None:
        env["POD_IP"] = pod_ip
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


@pytest.mark.parametrize(
    ("pod_ip", "name"),
    [
        ("10.0.0.7", "tfserving-10.0.0.7"),
        ("fd00::7", "tfserving-fd00--7"),
        ("FD00::A:7", "tfserving-fd00--a-7"),
    ],
)
def test_names_the_replica_from_the_pod_ip(tmp_path: Path, pod_ip: str, name: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "REPLICA_PREFIX": "tfserving", "POD_IP": pod_ip}
    done = subprocess.run(
        ["bash", str(script_file(tmp_path)), "--name"], env=env, capture_output=True, text=True, timeout=10
    )
    assert (done.returncode, done.stdout) == (0, name + "\n"), done.stderr


def test_drains_an_ipv6_pod_under_its_dashed_name(tmp_path: Path, admin: tuple[FakeAdmin, int]) -> None:
    state, port = admin
    state.name = "tfserving-fd00--7"
    done, _ = run_drain(tmp_path, port, pod_ip="fd00::7")
    assert done.returncode == 0, done.stderr
    assert state.requests[0][:2] == ("POST", "/api/replicas/tfserving-fd00--7/drain")


def test_refuses_to_run_without_the_pod_ip(tmp_path: Path, admin: tuple[FakeAdmin, int]) -> None:
    state, port = admin
    done, elapsed = run_drain(tmp_path, port, pod_ip=None)
    assert done.returncode == 1 and elapsed < 5
    assert "POD_IP is not set" in done.stderr and state.requests == []


def test_a_gateway_pod_that_does_not_list_the_replica_has_nothing_to_drain(
    tmp_path: Path, admin: tuple[FakeAdmin, int]
) -> None:
    # It never saw the pod ready in DNS, or dropped it as the address left DNS: 404 "no replica
    # named", not a refusal.
    state, port = admin
    state.name = "tfserving-10.0.0.8"  # lists another pod only
    state.listed = [False]
    done, elapsed = run_drain(tmp_path, port)
    assert done.returncode == 0 and elapsed < 5, done.stderr
    assert f"{NAME} drained on 1 gateway pod(s)" in done.stdout
    assert [r[:2] for r in state.requests] == [
        ("POST", f"/api/replicas/{NAME}/drain"),
        ("GET", "/api/replicas"),
    ]


def test_a_replica_dropped_after_its_drain_is_idle(tmp_path: Path, admin: tuple[FakeAdmin, int]) -> None:
    # Drained, then its address leaves DNS and the gateway pod drops it while calls are in flight.
    state, port = admin
    state.in_flight = [3]
    state.listed = [True, True, False]
    done, _ = run_drain(tmp_path, port)
    assert done.returncode == 0, done.stderr
    assert [r[0] for r in state.requests] == ["POST", "GET", "GET", "GET"]
