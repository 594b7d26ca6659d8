"""Config reload under load: new split weights take effect through each reload path (file watch,
POST /api/reload, SIGHUP) with no failed call, and a bad file changes nothing but is reported.

Background traffic (4 threads, keep-alive) runs through every step; a phase's share is measured
on the calls that started after the step was confirmed and checked against Binomial(n, p) within
4 standard deviations. To prove that POST and SIGHUP work on their own, the file is rewritten
with its old modification time, so the gateway's file watch cannot be what applied it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Fleet
from tests.integration.gwproc import GatewayProc
from tests.integration.test_routing_support import (
    Background,
    Req,
    failures,
    metric,
    version_counts,
    within_sigmas,
)
from tests.integration.test_routing_support import wait_until as wait

MODEL = "half_plus_two"
PHASE = 300  # calls measured per phase


def cfg_with(fleet: Fleet, split: dict[str, float]) -> dict[str, Any]:
    return {"replicas": fleet.replica_cfg(),
            "models": {MODEL: {"labels": {"stable": 1, "canary": 2},
                               "routes": [{"split": split}], "balance": "least_request"}}}


@pytest.fixture
def gw(fleet: Fleet, gateway_factory: Any) -> GatewayProc:
    g: GatewayProc = gateway_factory(cfg_with(fleet, {"stable": 90, "canary": 10}))
    return g


@pytest.fixture
def traffic(gw: GatewayProc) -> Iterator[Background]:
    with Background(gw.rest_url, lambda i: Req(), concurrency=4) as bg:
        yield bg


def full_cfg(g: GatewayProc, cfg: dict[str, Any]) -> dict[str, Any]:
    return {**cfg, "listen": g.cfg["listen"], "health": g.cfg["health"]}


def write_keeping_mtime(g: GatewayProc, text: str) -> None:
    """Rewrite the config file but keep its modification time, so the file watch sees nothing."""
    st = os.stat(g.config_path)
    tmp = g.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, g.config_path)


def live_split(g: GatewayProc) -> dict[str, float]:
    status, body = g.api("/api/config")
    assert status == 200
    return dict(body["config"]["models"][MODEL]["routes"][0]["split"])


def last_reload(g: GatewayProc) -> dict[str, Any]:
    return dict(g.api("/api/config")[1]["last_reload"])


def measure(bg: Background, canary_p: float, what: str) -> None:
    """Wait for PHASE calls that start from now on and check their canary share."""
    t0 = time.monotonic()
    wait(lambda: len(bg.between(t0, time.monotonic())) >= PHASE, 60.0, f"{PHASE} calls ({what})",
         interval=0.05)
    results = bg.between(t0, time.monotonic())[:PHASE]
    assert failures(results) == []
    ok, msg = within_sigmas(version_counts(results)[2], len(results), canary_p)
    print(f"{what}: canary {msg}")
    assert ok, f"{what}: {msg}"


def test_reload_paths_change_weights_under_load(gw: GatewayProc, traffic: Background,
                                                fleet: Fleet) -> None:
    measure(traffic, 0.10, "start, 90/10")

    # 1. File watch: just rewrite the file.
    gw.write_config(full_cfg(gw, cfg_with(fleet, {"stable": 10, "canary": 90})))
    wait(lambda: live_split(gw) == {"stable": 10, "canary": 90}, 10.0, "the file watch")
    measure(traffic, 0.90, "after file-watch reload, 10/90")

    # 2. POST /api/reload: answered after the swap, so the very next calls follow it.
    write_keeping_mtime(gw, yaml.safe_dump(full_cfg(gw, cfg_with(fleet, {"stable": 90, "canary": 10}))))
    assert gw.api("/api/reload", "POST") == (200, {"ok": True, "error": None})
    assert live_split(gw) == {"stable": 90, "canary": 10}
    measure(traffic, 0.10, "after POST /api/reload, 90/10")

    # 3. SIGHUP.
    write_keeping_mtime(gw, yaml.safe_dump(full_cfg(gw, cfg_with(fleet, {"stable": 10, "canary": 90}))))
    gw.signal(signal.SIGHUP)
    wait(lambda: live_split(gw) == {"stable": 10, "canary": 90}, 10.0, "the SIGHUP reload")
    measure(traffic, 0.90, "after SIGHUP reload, 10/90")

    traffic.stop()
    print(f"{len(traffic.results)} calls across three reloads")
    assert failures(traffic.results) == []
    text = gw.metrics()
    assert metric(text, "infergate_config_reloads_total", outcome="applied") >= 3
    assert metric(text, "infergate_config_reloads_total", outcome="refused") == 0
    assert metric(text, "infergate_config_last_reload_ok") == 1


def test_bad_reload_changes_nothing_and_is_reported(gw: GatewayProc, traffic: Background,
                                                    fleet: Fleet) -> None:
    good = full_cfg(gw, cfg_with(fleet, {"stable": 90, "canary": 10}))
    measure(traffic, 0.10, "start, 90/10")

    # Invalid YAML through POST /api/reload.
    write_keeping_mtime(gw, "models: {half_plus_two: [unclosed\n")
    status, body = gw.api("/api/reload", "POST")
    assert status == 400 and body["ok"] is False and "invalid YAML" in body["error"]
    lr = last_reload(gw)
    assert lr["ok"] is False and "invalid YAML" in lr["error"]
    assert metric(gw.metrics(), "infergate_config_last_reload_ok") == 0
    measure(traffic, 0.10, "after invalid YAML, still 90/10")

    # An unknown label through the file watch.
    bad = full_cfg(gw, cfg_with(fleet, {"stable": 10, "beta": 90}))
    before = last_reload(gw)["at"]
    gw.write_config(bad)
    lr = wait(lambda: (r := last_reload(gw))["at"] != before and r, 10.0, "the file watch")
    assert lr["ok"] is False
    assert "routes.0.split: unknown label 'beta'" in lr["error"], lr["error"]
    assert live_split(gw) == {"stable": 90, "canary": 10}
    measure(traffic, 0.10, "after an unknown label, still 90/10")

    # A negative weight through SIGHUP.
    before = last_reload(gw)["at"]
    write_keeping_mtime(gw, yaml.safe_dump(full_cfg(gw, cfg_with(fleet, {"stable": -1, "canary": 2}))))
    gw.signal(signal.SIGHUP)
    lr = wait(lambda: (r := last_reload(gw))["at"] != before and r, 10.0, "the SIGHUP reload")
    assert lr["ok"] is False and "negative" in lr["error"], lr["error"]
    text = gw.metrics()
    assert metric(text, "infergate_config_last_reload_ok") == 0
    assert metric(text, "infergate_config_reloads_total", outcome="refused") == 3
    assert metric(text, "infergate_config_reloads_total", outcome="applied") == 0

    # A good file afterwards is applied as usual.
    status, body = gw.reload({**good, "models": cfg_with(fleet, {"stable": 10, "canary": 90})["models"]})
    assert (status, body) == (200, {"ok": True, "error": None})
    assert last_reload(gw)["ok"] is True
    assert metric(gw.metrics(), "infergate_config_last_reload_ok") == 1
    measure(traffic, 0.90, "after the good reload, 10/90")

    traffic.stop()
    print(f"{len(traffic.results)} calls across three refused reloads and one good one")
    assert failures(traffic.results) == []


def test_reload_ok_gauge_is_1_at_start(gw: GatewayProc) -> None:
    assert last_reload(gw)["ok"] is True
    assert metric(gw.metrics(), "infergate_config_last_reload_ok") == 1
