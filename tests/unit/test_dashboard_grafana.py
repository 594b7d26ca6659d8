"""deploy/grafana/infergate.json: valid JSON, a sane layout, and every query names only metrics
the gateway really exports (as its registry exposes them: counters with _total, histograms with
_bucket/_sum/_count)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gateway.core.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "infergate.json"


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(doc) for t in p.get("targets", [])]
    for v in doc["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            exprs.append(q["query"])
    return exprs


def test_it_parses_and_has_a_sane_layout() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert doc["uid"] == "infergate" and doc["title"]
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels(doc):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
        if p["type"] != "row":
            assert p["targets"], p["title"]


def test_every_query_names_an_exported_metric() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    known = exported_names()
    assert "infergate_requests_total" in known  # the helper itself works
    used: set[str] = set()
    for expr in queries(doc):
        names = set(re.findall(r"\binfergate_[a-z0-9_]+", expr))
        assert names, f"query names no infergate_ metric: {expr}"
        assert names <= known, f"unknown metric(s) {sorted(names - known)} in {expr}"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        used |= names
    # The metrics the dashboard exists for are all on it.
    for required in ("infergate_requests_total", "infergate_request_duration_seconds_bucket",
                     "infergate_upstream_duration_seconds_bucket", "infergate_replica_in_flight",
                     "infergate_replica_healthy", "infergate_replica_gpu_utilization",
                     "infergate_cache_requests_total", "infergate_scale_desired_replicas",
                     "infergate_scale_signal", "infergate_rollout_canary_weight",
                     "infergate_shadow_requests_total", "infergate_cost_per_1k_predictions",
                     "infergate_cost_last_hour"):
        assert required in used, required
