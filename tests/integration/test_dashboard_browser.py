"""The dashboard in a real headless Chromium (through Playwright), served with the admin API
shapes by an HTTP server on 127.0.0.1. Installs nothing: skips unless /usr/bin/chromium exists
and the playwright package is importable."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed"),
]

PAGE = Path(__file__).resolve().parents[2] / "gateway" / "dashboard.html"
API: dict[str, object] = {
    "/api/replicas": {"replicas": [
        {"name": "gpu-a", "pool": "gpu", "healthy": True, "routable": True, "ejected_for_s": 0,
         "in_flight": 2, "latency_ms": 10.0, "gpu_util": 0.5, "gpu_mem_frac": 0.3, "cpu_util": 0.1,
         "requests": 10, "errors": 0, "weight": 1, "capacity_rps": 100, "models": {"m": {"1": "AVAILABLE"}}},
        {"name": "gpu-b", "pool": "gpu", "healthy": False, "routable": False, "ejected_for_s": 0,
         "in_flight": 0, "latency_ms": 0, "gpu_util": None, "gpu_mem_frac": None, "cpu_util": None,
         "requests": 0, "errors": 0, "weight": 1, "capacity_rps": None, "models": {}}]},
    "/api/models": {"models": {"m": {"latest": 2, "versions": [1, 2], "labels": {"stable": 1, "canary": 2},
                                     "routes": [], "balance": "round_robin", "configured": True}}},
    "/api/traffic": {"models": {"m": {"arms": {"stable": 95, "canary": 5}, "versions": {"1": 95, "2": 5},
                                      "rps": 1.7, "p95_ms": 11.0, "errors": 0}}},
    "/api/rollouts": {"rollouts": {"m": {"state": "paused", "step": 1, "weight": 5, "reason": "held",
                                         "steps": [5, 50, 100],
                                         "checks": {"error_rate": {"value": 0, "limit": 0.01, "ok": True}}}}},
    "/api/scale": {"pools": {"gpu": {"current_replicas": 2, "desired_replicas": 2, "direction": "hold",
                                     "reason": "within thresholds", "signals": {"gpu_util": 0.5}}}},
}


class Handler(BaseHTTPRequestHandler):
    posts: list[str] = []

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        if self.path == "/":
            return self._send(200, "text/html; charset=utf-8", PAGE.read_bytes())
        doc = API.get(self.path)
        self._send(200 if doc is not None else 503, "application/json",
                   json.dumps(doc if doc is not None else {"error": "down"}).encode())

    def do_POST(self) -> None:  # noqa: N802
        self.posts.append(self.path)
        self._send(200, "application/json", b"{}")

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_dashboard_in_chromium(base_url: str) -> None:
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith(base_url) else outside.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base_url + "/")
            page.wait_for_selector("#replicas tbody tr[data-replica]")
            assert page.locator("#replicas tbody tr").count() == 2
            assert page.locator('#traffic [data-model="m"]').count() == 1
            assert page.locator('#rollouts [data-model="m"]').get_attribute("data-state") == "paused"
            assert page.locator('#scale [data-pool="gpu"] .desired').inner_text() == "2"
            assert "n/a" in page.locator("#cache").inner_text()
            page.locator('#rollouts button[data-action="resume"]').click()
            page.wait_for_timeout(300)
            assert Handler.posts == ["/api/rollouts/m/resume"]
            assert errors == []
        finally:
            browser.close()
    assert outside == []
