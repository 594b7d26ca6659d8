"""The dashboard in a real headless Chromium, against a real gateway with real traffic flowing.

Chromium runs as a plain subprocess (`--dump-dom`, `--screenshot`): no browser driver library is
needed. `--virtual-time-budget` lets the page run its fetches and timers (it renders on load and
every 2 s) before the DOM is dumped. The rendered DOM is read with the standard library's HTML
parser and checked for the replica rows, the traffic split per model and the rollout checks;
the screenshot is saved to artifacts/dashboard.png (gitignored) for people to look at.

Installs nothing: skips unless /usr/bin/chromium exists (Debian's `chromium` package). A second
test clicks the rollout buttons through Playwright, and skips unless that package is importable.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest

from tests.integration.gwproc import ROOT, GatewayProc
from tests.integration.test_rollout_support import (  # noqa: F401 - fixtures
    CANARY_REPLICA,
    MODEL,
    STABLE_REPLICA,
    RolloutFleet,
    by_replica,
    fleet_knobs_fixture,
    gateway_cfg,
    rfleet_fixture,
    rollout,
    traffic,
    wait_gateway_sees,
    wait_rollout,
)

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium"),
]
ARTIFACTS = ROOT / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]
# A step far longer than the test: the rollout holds step 1 while its checks fill with data.
ROLLOUT = {"steps": [10, 50, 100], "step_s": 600, "min_requests": 30, "max_p95_ratio": 10.0}
CHECKS = {"error_rate", "p95_ratio", "agreement", "requests"}


# ------------------------------------------------------------------------- a small DOM reader

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.texts) + "".join(c.text() for c in self.children)

    def walk(self) -> Iterator[Node]:
        for c in self.children:
            yield c
            yield from c.walk()

    def find_all(self, pred: Callable[[Node], bool]) -> list[Node]:
        return [n for n in self.walk() if pred(n)]

    def find(self, pred: Callable[[Node], bool], what: str) -> Node:
        found = self.find_all(pred)
        assert len(found) == 1, f"expected one {what}, found {len(found)}"
        return found[0]

    def by_id(self, id_: str) -> Node:
        return self.find(lambda n: n.attrs.get("id") == id_, f"#{id_}")


def attr(name: str, value: str | None = None, tag: str | None = None) -> Callable[[Node], bool]:
    return lambda n: (name in n.attrs and (value is None or n.attrs[name] == value)
                      and (tag is None or n.tag == tag))


class DomReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        n: Node | None = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data: str) -> None:
        self.cur.texts.append(data)


def parse(html: str) -> Node:
    reader = DomReader()
    reader.feed(html)
    reader.close()
    return reader.root


# ------------------------------------------------------------------------------ chromium

def chromium(url: str, profile: pathlib.Path, *extra: str,
             budget_ms: int = 8000) -> subprocess.CompletedProcess[str]:
    argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}", *extra, url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HOME": str(profile)})
    assert out.returncode == 0, f"chromium exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out


@pytest.fixture
def busy_gateway(fleet_knobs: RolloutFleet, gateway_factory: Any) -> Iterator[GatewayProc]:
    """A gateway in the middle of a rollout (step 1, 10 % canary) with traffic flowing."""
    gw = gateway_factory(gateway_cfg(fleet_knobs, 3, rollout=ROLLOUT))
    wait_gateway_sees(gw, [1, 3])
    with traffic(gw, concurrency=2, pace_s=0.03, limit=20000) as bg:
        while by_replica(bg.results)[CANARY_REPLICA] < ROLLOUT["min_requests"] + 5:
            bg.wait_for(20)
        yield gw
    assert [r for r in bg.results if r.status != 200] == []


def test_dashboard_renders_replicas_traffic_and_rollout(
        busy_gateway: GatewayProc, tmp_path: pathlib.Path) -> None:
    gw = busy_gateway
    out = chromium(gw.admin_url + "/", tmp_path / "profile", "--dump-dom")
    dom = parse(out.stdout)

    assert dom.by_id("status").text().strip() == "", "an admin endpoint failed to load"
    assert dom.by_id("updated").text().startswith("updated ")

    rows = dom.by_id("replicas").find_all(attr("data-replica", tag="tr"))
    assert {r.attrs["data-replica"]: r.attrs["data-healthy"] for r in rows} == {
        STABLE_REPLICA: "1", CANARY_REPLICA: "1"}
    canary_row = next(r for r in rows if r.attrs["data-replica"] == CANARY_REPLICA)
    assert f"{MODEL}:" in canary_row.text() and "healthy" in canary_row.text()

    card = dom.by_id("traffic").find(attr("data-model", MODEL), f"traffic card of {MODEL}")
    arms = card.find(lambda n: n.attrs.get("class") == "arms", "arms bar")
    assert {s.attrs["data-arm"] for s in arms.find_all(attr("data-arm"))} == {"stable", "canary"}
    canary_pct = float(arms.find(attr("data-arm", "canary"), "canary segment")
                       .attrs["style"].split("width:")[1].split("%")[0])
    assert 3 <= canary_pct <= 25, f"canary share drawn as {canary_pct} % at a 10 % step"
    versions = card.find(lambda n: n.attrs.get("class") == "versions", "versions bar")
    assert {s.attrs["data-arm"] for s in versions.find_all(attr("data-arm"))} == {"1", "3"}
    assert "rps" in card.text()

    ro = dom.by_id("rollouts").find(attr("data-model", MODEL, tag="div"), f"rollout of {MODEL}")
    assert ro.attrs["data-state"] == "progressing"
    assert "step 1/3" in ro.text() and "canary 10%" in ro.text()
    checks = {c.attrs["data-check"]: c.attrs["data-state"]
              for c in ro.find_all(attr("data-check", tag="tr"))}
    assert set(checks) == CHECKS
    # Enough canary calls have been answered, none failed: these two checks show as passing.
    assert checks["error_rate"] == "pass" and checks["requests"] == "pass", checks
    buttons = {b.attrs["data-action"] for b in ro.find_all(attr("data-action", tag="button"))}
    assert buttons == {"pause", "resume", "promote", "abort"}
    assert rollout(gw)["state"] == "progressing"  # loading the page acted on nothing


def test_dashboard_screenshot_artifact(busy_gateway: GatewayProc, tmp_path: pathlib.Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    chromium(busy_gateway.admin_url + "/", tmp_path / "profile", f"--screenshot={shot}",
             "--window-size=1280,1600")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1600)
    assert len(data) > 20_000  # a rendered page, not a blank one
    print(f"dashboard screenshot: {shot} ({len(data)} bytes)")


@pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                    reason="playwright not installed")
def test_dashboard_buttons_drive_the_rollout(busy_gateway: GatewayProc) -> None:
    from playwright.sync_api import sync_playwright

    gw = busy_gateway
    outside: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith(gw.admin_url)
                    else outside.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: d.accept())
            page.goto(gw.admin_url + "/")
            page.wait_for_selector(f'#rollouts [data-model="{MODEL}"][data-state="progressing"]')
            assert page.locator("#replicas tbody tr[data-replica]").count() == 2
            page.locator(f'#rollouts button[data-action="pause"][data-target="{MODEL}"]').click()
            page.wait_for_selector(f'#rollouts [data-model="{MODEL}"][data-state="paused"]')
            assert rollout(gw)["reason"] == "pause from the dashboard"
            page.locator(f'#rollouts button[data-action="abort"][data-target="{MODEL}"]').click()
            page.wait_for_selector(f'#rollouts [data-model="{MODEL}"][data-state="rolled_back"]')
            assert (rollout(gw)["state"], rollout(gw)["weight"]) == ("rolled_back", 0)
            assert errors == []
        finally:
            browser.close()
    assert outside == []
