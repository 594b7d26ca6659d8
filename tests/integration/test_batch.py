"""`infergate batch` as a real command against a real gateway and replica: ~2,000 instances from a
JSONL file are answered in input order, land in the gateway's cache store, and afterwards the
real-time path answers the same inputs from the cache.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import Fleet, start_fleet
from tests.integration.gwproc import ROOT, GatewayProc, http

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

N = 2000


@pytest.fixture(scope="module")
def fleet(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(models_dir, tmp_path_factory.mktemp("fleet"), n=1)
    yield f
    for r in f.replicas:
        r.stop()


def instance(i: int) -> float:
    return i * 0.25 - 100.0


def run_batch(*args: str, timeout: float = 150.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "gateway.commands.cli", "batch", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_batch_fills_the_cache_and_real_time_calls_hit(
        fleet: Fleet, gateway_factory: Any, tmp_path: pathlib.Path) -> None:
    g: GatewayProc = gateway_factory({"replicas": fleet.replica_cfg(),
                                      "models": {"half_plus_two": {"cache": {"exact": {"ttl_s": 600}}}}})
    src = tmp_path / "instances.jsonl"
    src.write_text("".join(json.dumps(instance(i)) + "\n" for i in range(N)))
    replica = fleet.replicas[0]
    before = replica.request_count("half_plus_two")

    done = run_batch("--model", "half_plus_two", "--input", str(src), "--gateway", g.rest_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{N} instances, 0 failed" in done.stdout

    # Every instance went to the replica once, and its answer is in the store.
    assert replica.request_count("half_plus_two") - before == N
    status, cache = g.api("/api/cache")
    assert status == 200 and cache["models"]["half_plus_two"]["stats"]["memory_entries"] == N

    # Answers come back in input order (the default output file sits beside the input).
    lines = (tmp_path / "instances.out.jsonl").read_text().splitlines()
    assert len(lines) == N
    for i in (0, 1, N // 2, N - 1):
        row = json.loads(lines[i])
        assert row["line"] == i + 1 and row["status"] == 200
        assert row["predictions"] == [instance(i) * 0.5 + 3.0]  # latest version: x / 2 + 3

    # The real-time path, one instance a call, is answered from what the batch stored.
    for i in (3, 777, 1500, N - 2):
        s, h, out = http("POST", g.rest_url + "/v1/models/half_plus_two:predict",
                         {"instances": [instance(i)]})
        assert s == 200 and h["x-infergate-cache"] == "hit", (i, h)
        assert json.loads(out)["predictions"] == [instance(i) * 0.5 + 3.0]
    assert replica.request_count("half_plus_two") - before == N


def test_batch_reports_failed_lines_and_exits_non_zero(
        fleet: Fleet, gateway_factory: Any, tmp_path: pathlib.Path) -> None:
    g: GatewayProc = gateway_factory({"replicas": fleet.replica_cfg()})
    src = tmp_path / "mixed.jsonl"
    # A plain instance, a broken line, a whole request the replica refuses (ragged), an instance.
    src.write_text('1.0\n{not json\n{"instances": [[1.0, 2.0], [3.0]]}\n3.0\n')
    out = tmp_path / "answers.jsonl"
    done = run_batch("--model", "half_plus_two", "--input", str(src), "--gateway", g.rest_url,
                     "--output", str(out), "--retries", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "4 instances, 2 failed" in done.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["predictions"] == [3.5] and rows[3]["predictions"] == [4.5]
    assert "invalid JSON" in rows[1]["error"]
    assert rows[2]["status"] == 400 and "error" in rows[2]
