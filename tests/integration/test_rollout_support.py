"""Helpers for the rollout, shadow and dashboard integration tests; this module holds no tests.

The fleet: one models base per test module with half_plus_two versions 1, 2 and 3, where 3 is
a copy of 1 (same answers, another version number) and 2 answers differently (0.5 x + 3). Two
replicas serve it: "stable" loads only version 1, "canary" loads only versions 2 and 3. A
latency or error knob set on the canary replica therefore hits only canary calls, and which
replica answered a call tells the arms apart (x-infergate-replica).

Client traffic runs on a few threads (`Background` of test_routing_support) and every answer is
kept, so a test counts the calls that saw the canary from the answers themselves.

A test module imports the fixtures it uses by their function names (`rfleet_fixture`,
`fleet_knobs_fixture`, `webhook_fixture`) and asks for them by fixture name.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.gwproc import GatewayProc
from tests.integration.test_routing_support import Background, Req, Res, wait_until
from tests.support.procs import ReplicaProc, start_replica

MODEL = "half_plus_two"
PREDICT = f"/v1/models/{MODEL}:predict"
BODY = json.dumps({"instances": [1.0]}).encode()
# x = 1.0: versions 1 and 3 answer 2.5, version 2 answers 3.5.
STABLE_ANSWER, V2_ANSWER = 2.5, 3.5
CANARY_REPLICA, STABLE_REPLICA = "canary", "stable"


# ---------------------------------------------------------------------------------- the fleet

def make_models_base(shared: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """half_plus_two/{1,2,3} under ``dest`` (3 = a copy of 1); returns the model's base path."""
    base = dest / MODEL
    base.mkdir(parents=True, exist_ok=True)
    for v in (1, 2):
        shutil.copytree(shared / MODEL / str(v), base / str(v))
    shutil.copytree(shared / MODEL / "1", base / "3")
    return base


def replica_config(base: pathlib.Path, versions: Sequence[int], dest: pathlib.Path) -> pathlib.Path:
    pick = " ".join(f"versions: {v}" for v in versions)
    dest.write_text(
        "model_config_list {\n"
        f'  config {{ name: "{MODEL}" base_path: "{base}" model_platform: "tensorflow" '
        f"model_version_policy {{ specific {{ {pick} }} }} }}\n"
        "}\n")
    return dest


@dataclass
class RolloutFleet:
    stable: ReplicaProc
    canary: ReplicaProc

    def replica_cfg(self, canary_pool: str = "default") -> list[dict[str, Any]]:
        """Both replicas, in one pool unless ``canary_pool`` says otherwise. Outlier ejection
        never ejects more than half of a pool, so a canary replica alone in its pool is never
        ejected, however often it fails."""
        return [{"name": name, "rest": f"127.0.0.1:{r.rest_port}", "grpc": f"127.0.0.1:{r.grpc_port}",
                 "pool": pool}
                for name, r, pool in ((STABLE_REPLICA, self.stable, "default"),
                                      (CANARY_REPLICA, self.canary, canary_pool))]

    def reset_knobs(self) -> None:
        for r in (self.stable, self.canary):
            r.set_knobs(latency_ms=0, error_rate=0)


def start_rollout_fleet(shared: pathlib.Path, workdir: pathlib.Path) -> RolloutFleet:
    """Both replicas, started side by side (each spends seconds loading TensorFlow)."""
    base = make_models_base(shared, workdir / "models")
    plan = {STABLE_REPLICA: [1], CANARY_REPLICA: [2, 3]}
    with ThreadPoolExecutor(len(plan)) as pool:
        futures = {name: pool.submit(start_replica,
                                     replica_config(base, versions, workdir / f"{name}.config"),
                                     name=f"ro-{name}")
                   for name, versions in plan.items()}
    started = {name: f.result() for name, f in futures.items() if f.exception() is None}
    try:
        for f in futures.values():
            if f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        for name, versions in plan.items():
            for v in versions:
                started[name].wait_available(MODEL, v)
    except BaseException:
        for r in started.values():
            r.stop()
        raise
    return RolloutFleet(started[STABLE_REPLICA], started[CANARY_REPLICA])


@pytest.fixture(scope="module", name="rfleet")
def rfleet_fixture(models_dir: pathlib.Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutFleet]:
    f = start_rollout_fleet(models_dir, tmp_path_factory.mktemp("rollout-fleet"))
    yield f
    f.stable.stop()
    f.canary.stop()


@pytest.fixture(name="fleet_knobs")
def fleet_knobs_fixture(rfleet: RolloutFleet) -> Iterator[RolloutFleet]:
    """The module's fleet with its knobs off before and after the test."""
    rfleet.reset_knobs()
    yield rfleet
    rfleet.reset_knobs()


# --------------------------------------------------------------------------------- the config

def gateway_cfg(fleet: RolloutFleet, canary_version: int = 3, *,
                rollout: dict[str, Any] | None = None, shadow: dict[str, Any] | None = None,
                canary_pool: str = "default", **top: Any) -> dict[str, Any]:
    """A gateway config: labels stable=1, canary=N, an optional rollout and shadow. Without a
    rollout, every call goes to stable (else the latest version, the canary's, would serve);
    with one, the rollout's weights are the model's route."""
    model: dict[str, Any] = {"labels": {"stable": 1, "canary": canary_version}}
    if rollout is not None:
        model["rollout"] = {"canary": "canary", **rollout}
    else:
        model["routes"] = [{"split": {"stable": 100}}]
    if shadow is not None:
        model["shadow"] = shadow
    return {"replicas": fleet.replica_cfg(canary_pool), "models": {MODEL: model}, **top}


def fast_rollout(**over: Any) -> dict[str, Any]:
    """Short steps for tests: 10 -> 50 -> 100 %, 2 s and 30 canary calls per step."""
    return {"steps": [10, 50, 100], "step_s": 2, "min_requests": 30, **over}


def wait_gateway_sees(gw: GatewayProc, versions: Sequence[int], timeout: float = 15.0) -> None:
    """Until the gateway's health checker has both replicas' versions AVAILABLE."""
    def seen() -> bool:
        _, doc = gw.api("/api/replicas")
        have = {int(v) for r in doc["replicas"] for v, s in r["models"].get(MODEL, {}).items()
                if s == "AVAILABLE" and r["healthy"]}
        return set(versions) <= have
    wait_until(seen, timeout, f"the gateway to see versions {list(versions)}")


# --------------------------------------------------------------------------------- rollouts

def rollout(gw: GatewayProc) -> dict[str, Any]:
    status, doc = gw.api("/api/rollouts")
    assert status == 200, doc
    ro: dict[str, Any] = doc["rollouts"][MODEL]
    return ro


def wait_rollout(gw: GatewayProc, timeout: float, what: str, **want: Any) -> dict[str, Any]:
    """Poll GET /api/rollouts until the model's entry has every key of ``want``."""
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = rollout(gw)
        return last if all(last.get(k) == v for k, v in want.items()) else None

    try:
        return wait_until(check, timeout, what, interval=0.1)  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last rollout state: {json.dumps(last)[:2000]}") from None


def kinds(ro: dict[str, Any]) -> list[str]:
    return [h["kind"] for h in ro["history"]]


# ---------------------------------------------------------------------------------- traffic

def traffic(gw: GatewayProc, concurrency: int = 3, limit: int = 3000, pace_s: float = 0.02,
            headers: dict[str, str] | None = None, path: str = PREDICT) -> Background:
    """Client calls from ``concurrency`` threads, each pausing ``pace_s`` between calls (at most
    concurrency / pace_s calls a second) and at most ``limit`` calls in all."""
    req = Req(path=path, body=BODY, headers=headers or {})

    def make(_i: int) -> Req:
        time.sleep(pace_s)
        return req

    return Background(gw.rest_url, make, concurrency=concurrency, limit=limit)


def answer(res: Res) -> float | None:
    if res.status != 200:
        return None
    return float(json.loads(res.body)["predictions"][0])


def by_replica(results: Sequence[Res]) -> Counter[str]:
    return Counter(r.headers.get("x-infergate-replica", "") for r in results)


def by_version(results: Sequence[Res]) -> Counter[str]:
    return Counter(r.headers.get("x-infergate-version", "") for r in results)


def share_bound(n: int, weight_pct: float, slack: int) -> int:
    """The most calls of ``n`` a ``weight_pct`` % arm may get: mean + 4 sd + ``slack``
    (Binomial(n, w); a correct split exceeds it about once in 30,000 runs)."""
    p = weight_pct / 100.0
    return math.floor(n * p + 4 * math.sqrt(n * p * (1 - p)) + slack)


# ---------------------------------------------------------------------------------- webhooks

class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        events: list[dict[str, Any]] = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    events.append({"_path": self.path,
                                   "_content_type": self.headers.get("Content-Type", ""),
                                   **json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.events = events
        self._lock = lock
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/rollout"

    def rollout_events(self, model: str = MODEL) -> list[dict[str, Any]]:
        """The model's rollout events in the order the transitions happened (each is POSTed on
        its own, so two transitions a moment apart may arrive in either order)."""
        with self._lock:
            found = [e for e in self.events if e.get("event") == "rollout" and e.get("model") == model]
        return sorted(found, key=lambda e: float(e["at"]))

    def wait_kind(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.rollout_events() if e.get("kind") == kind), None)
        return wait_until(found, timeout, f"a {kind!r} webhook")  # type: ignore[no-any-return]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module", name="webhook")
def webhook_fixture() -> Iterator[WebhookReceiver]:
    w = WebhookReceiver()
    yield w
    w.close()
