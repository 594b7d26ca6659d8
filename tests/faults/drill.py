"""What every fault drill does around its one harmful act: start a steady load, wait for a
phase of good calls, mark the fault, mark recovery, run one more phase, report and check.

What must always hold: a drill's report counts every call the load made, and its summary line
(printed, visible with -s) gives calls, failures and p50/p99 per phase plus the gateway's own
retry counters, so a failure names its cause.
"""

from __future__ import annotations

import time
from typing import Any

from tests.faults.load import ClientFactory, Load, Report
from tests.integration.gwproc import GatewayProc

CONCURRENCY = 16
RATE = 400.0  # calls per second offered: steady, and leaves CPU for the replicas on 2 cores
PHASE = 600  # calls before the fault, and again after recovery
MAX_CALLS = 40_000  # a bound, never reached: each drill stops its load itself


def replicas_view(g: GatewayProc) -> dict[str, dict[str, Any]]:
    status, body = g.api("/api/replicas")
    assert status == 200
    return {r["name"]: r for r in body["replicas"]}


def wait_replica(g: GatewayProc, name: str, *, healthy: bool, timeout: float = 30.0) -> None:
    """Until the gateway's view of replica `name` is healthy (or not)."""
    end = time.monotonic() + timeout
    while replicas_view(g)[name]["healthy"] is not healthy:
        assert time.monotonic() < end, f"{name} not healthy={healthy} after {timeout} s"
        time.sleep(0.05)


def counter_total(g: GatewayProc, name: str) -> int:
    """Sum of a counter's samples over all label values, from the gateway's /metrics."""
    total = 0.0
    for line in g.metrics().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def start_load(drill: str, client: ClientFactory, *, rate: float | None = RATE,
               concurrency: int = CONCURRENCY, warmup: int = PHASE,
               max_calls: int = MAX_CALLS) -> Load:
    """A steady load with `warmup` good calls behind it, and the fault marked as 'during'."""
    load = Load(drill, client, concurrency=concurrency, max_calls=max_calls, rate=rate).start()
    load.wait_done(warmup)
    load.mark("during")
    return load


def finish(load: Load, g: GatewayProc, *, after: int = PHASE) -> Report:
    """Mark recovery, run `after` more calls, stop; print the report with the retry counters."""
    load.mark("after")
    load.wait_more(after)
    load.stop()
    report = load.join(60.0)
    report.notes["retries"] = counter_total(g, "infergate_retries_total")
    report.notes["retry_budget_exhausted"] = counter_total(
        g, "infergate_retry_budget_exhausted_total")
    print("\n" + report.summary())
    return report


def assert_no_failures(report: Report) -> None:
    assert not report.failures, (f"{report.drill}: {len(report.failures)} of {report.calls} calls "
                                 f"failed: {report.failure_text()}")
