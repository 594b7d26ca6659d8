"""`infergate rollout` against a real HTTP server on 127.0.0.1 that answers the admin rollout API
from a real RolloutController; an admin address with nothing listening; a model with no rollout."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.commands.rollout import main
from gateway.config import Rollout
from gateway.rollout.controller import RolloutController, RolloutError

CTL = RolloutController("half_plus_two", Rollout(canary="canary", steps=[5, 25, 50, 100]),
                        stable_version=1, canary_version=2)


class Admin(BaseHTTPRequestHandler):
    ctl: RolloutController
    posts: list[tuple[str, dict[str, object]]]

    def _send(self, status: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        if self.path == "/api/rollouts":
            self._send(200, {"rollouts": {self.ctl.model: self.ctl.to_json()}})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        parts = self.path.strip("/").split("/")
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.posts.append((self.path, body))
        if len(parts) != 4 or parts[:2] != ["api", "rollouts"]:
            return self._send(404, {"error": "not found"})
        if parts[2] != self.ctl.model:
            return self._send(404, {"error": f"model {parts[2]!r} has no rollout"})
        try:
            getattr(self.ctl, parts[3])(*([body["reason"]] if "reason" in body else []))
        except RolloutError as exc:
            return self._send(409, {"error": str(exc)})
        self._send(200, self.ctl.to_json())

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def admin() -> Iterator[tuple[str, type[Admin]]]:
    handler = type("H", (Admin,), {"ctl": RolloutController(
        "half_plus_two", CTL.cfg, stable_version=1, canary_version=2), "posts": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_status_prints_a_summary(admin: tuple[str, type[Admin]],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = admin
    assert main(["status", "half_plus_two", "--admin", url]) == 0
    out = capsys.readouterr().out
    assert "half_plus_two: progressing, step 1/4, canary weight 5%" in out
    assert "error_rate" in out and "waiting" in out and "FAIL" not in out and "version 2" in out
    assert main(["status", "--admin", url.removeprefix("http://"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["half_plus_two"]["state"] == "progressing"


def test_actions_post_and_print_the_new_state(admin: tuple[str, type[Admin]],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, handler = admin
    assert main(["pause", "half_plus_two", "--admin", url, "--reason", "checking"]) == 0
    assert "paused" in capsys.readouterr().out
    assert handler.posts == [("/api/rollouts/half_plus_two/pause", {"reason": "checking"})]
    assert main(["resume", "half_plus_two", "--admin", url]) == 0
    assert main(["promote", "half_plus_two", "--admin", url]) == 0
    assert "stable now serves: 2" in capsys.readouterr().out
    assert handler.ctl.state == "promoted"
    assert main(["abort", "half_plus_two", "--admin", url]) == 1
    assert "HTTP 409" in capsys.readouterr().err


def test_a_model_without_a_rollout(admin: tuple[str, type[Admin]],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = admin
    assert main(["status", "resnet", "--admin", url]) == 1
    assert "'resnet' has no rollout (rollouts: half_plus_two)" in capsys.readouterr().err
    assert main(["abort", "resnet", "--admin", url]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["pause", "--admin", url]) == 1


def test_an_unreachable_admin_api(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        assert main(["status", "--admin", f"http://127.0.0.1:{port}", "--timeout", "2"]) == 2
        assert main(["pause", "m", "--admin", f"http://127.0.0.1:{port}", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("cannot reach the admin API") == 2
