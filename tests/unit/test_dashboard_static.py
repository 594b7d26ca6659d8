"""The dashboard page: well-formed HTML, nothing loaded from anywhere but same-origin /api/*,
every endpoint referenced, stable element ids; and (where node is installed) its script run
for real against an HTTP server on 127.0.0.1 serving the admin API shapes, one endpoint
failing, to check what it renders."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "gateway" / "app" / "dashboard.html"
ENDPOINTS = ["/api/replicas", "/api/models", "/api/traffic", "/api/rollouts", "/api/cache", "/api/scale",
             "/api/cost", "/api/tenants"]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Tree(HTMLParser):
    """Checks nesting and collects attributes, ids and script text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.ids: set[str] = set()
        self.scripts: list[str] = []
        self.selectors: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            self.attrs.append((tag, k, v))
            if k == "id" and v:
                self.ids.add(v)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            self.attrs.append((tag, k, v))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'} at {self.getpos()}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)


def parse(html: str) -> Tree:
    t = Tree()
    t.feed(html)
    t.close()
    return t


def test_the_page_is_well_formed() -> None:
    html = PAGE.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    tree = parse(html)
    assert tree.errors == [] and tree.stack == []
    assert {"replicas", "traffic", "rollouts", "cache", "scale", "cost", "updated", "status"} <= tree.ids
    assert len(tree.scripts) == 1


def test_nothing_is_loaded_from_elsewhere() -> None:
    html = PAGE.read_text(encoding="utf-8")
    tree = parse(html)
    for tag, key, value in tree.attrs:
        if key in ("src", "href", "action", "srcset", "xlink:href", "poster", "data"):
            assert value is not None and not re.match(r"\s*(https?:|//|data:|javascript:)", value, re.I), \
                (tag, key, value)
    assert not re.search(r"https?://", html, re.I)
    assert not re.search(r"<link\b|@import|url\(", html, re.I)
    script = tree.scripts[0]
    # Every fetch goes to a same-origin /api/ path (a literal or a template).
    for call in re.findall(r"fetch\(([^,)]*)", script):
        assert re.match(r"\s*(path|[`\"]/api/)", call), call
    assert "XMLHttpRequest" not in script and "WebSocket" not in script and "import(" not in script


def test_every_endpoint_is_referenced() -> None:
    html = PAGE.read_text(encoding="utf-8")
    for ep in ENDPOINTS:
        assert f'"{ep}"' in html, ep
    assert "/api/rollouts/${encodeURIComponent(model)}/${action}" in html


# ---------------------------------------------------------------------------------------------
# The script, run by node against a real HTTP server.

API = {
    "/api/replicas": {"replicas": [
        {"name": "gpu-a", "pool": "gpu", "healthy": True, "routable": True, "ejected_for_s": 0,
         "in_flight": 3, "latency_ms": 12.5, "gpu_util": 0.91, "gpu_mem_frac": 0.4, "cpu_util": 0.2,
         "requests": 1200, "errors": 1, "weight": 1, "capacity_rps": 400,
         "models": {"half_plus_two": {"1": "AVAILABLE", "2": "AVAILABLE"}}},
        {"name": "gpu-b", "pool": "gpu", "healthy": False, "routable": False, "ejected_for_s": 0,
         "in_flight": 0, "latency_ms": 0, "gpu_util": None, "gpu_mem_frac": None, "cpu_util": None,
         "requests": 0, "errors": 0, "weight": 1, "capacity_rps": None, "models": {}},
        {"name": "<b>cpu</b>", "pool": "cpu", "healthy": True, "routable": True, "ejected_for_s": 12.3,
         "in_flight": 0, "latency_ms": 3, "gpu_util": -1, "gpu_mem_frac": None, "cpu_util": 0.5,
         "requests": 5, "errors": 0, "weight": 2, "capacity_rps": None, "models": {}},
    ]},
    "/api/models": {"models": {"half_plus_two": {"latest": 2, "versions": [1, 2],
                                                 "labels": {"stable": 1, "canary": 2}, "routes": [],
                                                 "balance": "least_loaded", "configured": True},
                               "resnet": {"latest": 7, "versions": [7], "labels": {}, "routes": [],
                                          "balance": "round_robin", "configured": False}}},
    "/api/traffic": {"models": {"half_plus_two": {"arms": {"stable": 900, "canary": 100},
                                                  "versions": {"1": 900, "2": 100}, "rps": 16.7,
                                                  "p95_ms": 14.2, "errors": 0}}},
    "/api/rollouts": {"rollouts": {"half_plus_two": {
        "state": "progressing", "step": 2, "weight": 25, "reason": "step 1 passed", "steps": [5, 25, 50, 100],
        "checks": {"error_rate": {"value": 0.0, "limit": 0.01, "ok": True},
                   "p95_ratio": {"value": 1.6, "limit": 1.2, "ok": False},
                   "agreement": {"value": None, "limit": 0.99, "ok": None},
                   "requests": {"value": 40, "limit": 100, "ok": False}}}}},
    "/api/scale": {"pools": {"gpu": {"current_replicas": 2, "desired_replicas": 4, "direction": "up",
                                     "reason": "p95_latency_ms 250 > 200",
                                     "signals": {"p95_latency_ms": 250.0, "queue_depth": 3,
                                                 "gpu_util": 0.91, "cpu_util": None}}}},
    "/api/tenants": {"shared": False, "tenants": {"search": {
        "priority": "standard", "weight": 3, "models": "*", "limits": None, "calls": 10,
        "errors": 0, "rate_limited": 2, "in_flight": 1, "queue_s": 0.5, "replica_s": 1.2}}},
    "/api/cost": {"window_s": 3600, "currency": None, "unpriced": ["<i>edge</i>"],
                  "pools": {"gpu": {"cost_per_hour": 4.32, "replicas": 2, "cost": 4.0, "idle_cost": 1.0}},
                  "models": {"half_plus_two": {"calls": 1200, "cost": 3.0, "cost_per_1k": 2.5,
                                               "by_pool": {"gpu": {"calls": 1200, "cost": 3.0,
                                                                   "cost_per_1k": 2.5}}}}},
}

HARNESS = r"""
const fs = require("fs"), vm = require("vm");
const [page, base] = process.argv.slice(2);
const html = fs.readFileSync(page, "utf8");
const code = html.slice(html.indexOf("<script>") + 8, html.lastIndexOf("</script>"));
const els = new Map();
const el = key => {
  if (!els.has(key)) els.set(key, {innerHTML: "", textContent: "", addEventListener() {}});
  return els.get(key);
};
let waiting = null;
const ctx = {
  document: {querySelector: s => el(s), getElementById: id => el("#" + id)},
  fetch: (path, opts) => fetch(base + path, opts),
  setTimeout: fn => { const w = waiting; waiting = null; if (w) w(fn); return 1; },
  clearTimeout: () => {}, confirm: () => false, alert: () => {}, console, Promise, Map, Set, Math,
  Date, JSON, Object, Array, String, Number, Error, isFinite, encodeURIComponent,
};
const cycle = () => new Promise(resolve => { waiting = resolve; });
(async () => {
  let next = cycle();
  vm.runInNewContext(code, ctx);
  let fn = await next;
  next = cycle();
  fn();
  await next;
  const out = {};
  for (const [k, v] of els) out[k] = v.innerHTML || v.textContent;
  process.stdout.write(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
"""


class Api(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self.seen.append(self.path)
        doc = API.get(self.path)
        body = json.dumps(doc if doc is not None else {"error": "boom"}).encode()
        self.send_response(200 if doc is not None else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Collect(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, attr: str) -> list[dict[str, str | None]]:
        return [a for _t, a in self.tags if attr in a]

    def tags_with(self, attr: str, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and attr in a]


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_the_script_renders_every_section(api_url: str, tmp_path: Path) -> None:
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    Api.seen = []
    proc = subprocess.run(["node", str(harness), str(PAGE), api_url], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert sorted(set(Api.seen)) == sorted(ENDPOINTS)  # and nothing else

    rows = Collect(out["#replicas tbody"])
    assert [a["data-replica"] for a in rows.having("data-replica")] == ["gpu-a", "gpu-b", "<b>cpu</b>"]
    assert [a["data-healthy"] for a in rows.having("data-replica")] == ["1", "0", "1"]
    text = "".join(rows.text)
    assert "ejected 13s" in text and "down" in text and "91%" in text
    assert not any(t == "b" for t, _ in rows.tags)  # names are escaped, not markup

    traffic = Collect(out["#traffic .body"])
    assert [a["data-model"] for a in traffic.having("data-model")] == ["half_plus_two", "resnet"]
    assert {a["data-arm"] for a in traffic.having("data-arm")} == {"stable", "canary", "1", "2"}
    assert any(t == "polyline" for t, _ in traffic.tags)  # two polls: a sparkline exists

    rollouts = Collect(out["#rollouts .body"])
    assert [a["data-model"] for a in rollouts.having("data-model")] == ["half_plus_two"]
    states = {a["data-check"]: a["data-state"] for a in rollouts.having("data-check")}
    assert states == {"error_rate": "pass", "p95_ratio": "fail", "agreement": "wait", "requests": "wait"}

    scale = Collect(out["#scale .body"])
    assert [(a["data-pool"], a["data-direction"]) for a in scale.having("data-pool")] == [("gpu", "up")]
    assert "n/a" in "".join(scale.text)  # cpu_util null

    cost = Collect(out["#cost .body"])
    assert [a["data-pool"] for a in cost.tags_with("data-pool", "tr")] == ["gpu", "gpu"]
    assert [a["data-model"] for a in cost.having("data-model")] == ["half_plus_two"]
    text = "".join(cost.text)
    assert "2.5000" in text and "25%" in text and "<i>edge</i>" in text  # idle share; escaped name
    assert not any(t == "i" and not a for t, a in cost.tags)

    assert "n/a" in out["#cache .body"] and "/api/cache" in out["#status"]
