"""Model versions come and go under live traffic: a version folder added to the replicas' base
path becomes routable once AVAILABLE, a removed one stops receiving traffic, and no client
request fails on the way.

Two replicas poll one base path every 0.5 s; the gateway probes them every 0.5 s. A client thread
sends REST predicts without a version throughout (bounded in time and rate) and records every
answer: status, the x-infergate-version header and the predictions, which tell the versions
apart (v1: 0.5x+2, v2: 0.5x+3).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.gwproc import GatewayProc, http
from tests.support.models import add_version
from tests.support.procs import ReplicaProc, start_replica

pytestmark = pytest.mark.integration

X = [1.0, 2.0, 5.0]
EXPECTED = {1: [2.5, 3.0, 4.5], 2: [3.5, 4.0, 5.5]}
PACE_S = 0.02  # at most ~50 requests/s: enough to hit a short window, light on 2 cores
LOOP_LIMIT_S = 60.0  # the client stops by itself after this, whatever happens to the test


@dataclass(frozen=True)
class Result:
    at: float
    status: int
    version: str  # x-infergate-version ("" when absent)
    body: str


@dataclass
class Client:
    """Sends predicts without a version until stopped (or LOOP_LIMIT_S), recording every answer."""

    url: str
    results: list[Result] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="lifecycle-client", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        end = time.monotonic() + LOOP_LIMIT_S
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                status, headers, out = http("POST", self.url, {"instances": X}, timeout=10.0)
                result = Result(time.monotonic(), status, headers.get("x-infergate-version", ""),
                                out.decode(errors="replace"))
            except OSError as exc:
                result = Result(time.monotonic(), -1, "", repr(exc))
            self.results.append(result)
            self.stop.wait(PACE_S)

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=15.0)

    def since(self, t: float) -> list[Result]:
        return [r for r in list(self.results) if r.at >= t]

    def wait_for(self, what: str, pred: object, after: float, timeout: float = 30.0) -> Result:
        """The first answer after ``after`` for which ``pred(result)`` holds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for r in self.since(after):
                if pred(r):  # type: ignore[operator]
                    return r
            time.sleep(0.05)
        raise TimeoutError(f"no answer {what} within {timeout:.0f} s; last: {self.results[-3:]}")


class FailedRequests(AssertionError):
    """Client requests failed while versions changed."""


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status != 200]


def check_answers(results: list[Result]) -> None:
    """Every good answer is what its version header says (0.5x+2 for 1, 0.5x+3 for 2)."""
    for r in results:
        if r.status == 200:
            assert json.loads(r.body)["predictions"] == EXPECTED[int(r.version)], r


def summary(results: list[Result]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        key = f"{r.status} v{r.version}" if r.status == 200 else f"{r.status} {r.body[:90]!r}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def state(replica: ReplicaProc, version: int) -> str | None:
    for s in replica.model_status("half_plus_two"):
        if int(s["version"]) == version:
            return str(s["state"])
    return None


@dataclass
class Setup:
    base: pathlib.Path
    source: pathlib.Path  # the read-only models folder to copy versions from
    replicas: list[ReplicaProc]
    gateway: GatewayProc


@pytest.fixture
def setup(models_dir: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[Setup]:
    base = tmp_path / "half_plus_two"
    base.mkdir()
    add_version(models_dir / "half_plus_two" / "1", base, 1)
    replicas: list[ReplicaProc] = []
    gateway: GatewayProc | None = None
    try:
        for i in range(2):  # start both, then wait for both: the loads overlap
            replicas.append(start_replica(base, name=f"life{i}", wait_available=False,
                                          extra_args=["--file_system_poll_wait_seconds=0.5"]))
        for r in replicas:
            r.wait_available("half_plus_two", 1)
        cfg = {"replicas": [{"name": f"r{i}", "rest": f"127.0.0.1:{r.rest_port}",
                             "grpc": f"127.0.0.1:{r.grpc_port}"} for i, r in enumerate(replicas)],
               "models": {"half_plus_two": {}},
               "health": {"interval_s": 0.5, "timeout_s": 1.0, "metrics_interval_s": 0.5}}
        gateway = GatewayProc(cfg, tmp_path / "gw")
        yield Setup(base, models_dir / "half_plus_two", replicas, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        for r in replicas:
            r.stop()


# A replica unloads the old version as soon as its successor is AVAILABLE (TF Serving's
# availability-preserving policy) while the gateway may still route by its last probe; a 404 for
# a version the gateway chose itself makes it re-probe and route again, so no call fails.
def test_versions_added_and_removed_under_traffic(setup: Setup) -> None:
    client = Client(f"{setup.gateway.rest_url}/v1/models/half_plus_two:predict")
    client.start()
    try:
        t0 = time.monotonic()
        client.wait_for("from version 1", lambda r: r.status == 200 and r.version == "1", t0)

        # Version 2 appears: once a replica has it AVAILABLE the gateway's "latest" moves to it.
        t_add = time.monotonic()
        add_version(setup.source / "2", setup.base, 2)
        client.wait_for("from version 2", lambda r: r.version == "2", t_add)
        for r in setup.replicas:
            r.wait_until(lambda r=r: state(r, 2) == "AVAILABLE", timeout=30.0, what="serving v2")
        t_settled = time.monotonic()
        client.wait_for("after both replicas serve v2", lambda r: True, t_settled + 1.0)
        added = client.since(t_add)

        # Version 2 disappears: the replicas unload it and the gateway goes back to version 1.
        t_remove = time.monotonic()
        hidden = setup.base / ".removed-2"  # not a number: no longer a version
        os.rename(setup.base / "2", hidden)
        shutil.rmtree(hidden)
        client.wait_for("from version 1 again", lambda r: r.version == "1", t_remove)
        for r in setup.replicas:
            r.wait_until(lambda r=r: state(r, 2) in ("END", None), timeout=30.0, what="unloading v2")
        t_back = time.monotonic()
        client.wait_for("after both replicas dropped v2", lambda r: True, t_back + 1.0)
    finally:
        client.halt()
    removed = [r for r in client.results if r.at >= t_remove]

    check_answers(client.results)
    # After the switch settled, every answer comes from the new latest version.
    assert {r.version for r in client.since(t_settled + 0.5) if r.at < t_remove} == {"2"}
    assert {r.version for r in client.since(t_back + 0.5)} == {"1"}
    if failures(added) or failures(removed):
        raise FailedRequests(f"adding v2: {summary(added)}; removing v2: {summary(removed)}")
