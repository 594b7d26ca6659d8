"""Fault-drill fixtures: three replicas on fixed ports that drills kill, hang and restart.

One trio per package run (a replica costs a few seconds and ~550 MB). A `Slot` keeps its pair of
ports for its whole life, so a replica killed or restarted by a drill comes back where the
gateway's config already points, as a restarted pod keeps its Service address. After every test
the trio is healed: a stopped replica is continued, a dead one started again, knobs reset.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import gateway_factory, model_config, models_dir  # noqa: F401
from tests.integration.gwproc import EngineGateway, GatewayProc
from tests.support.procs import (
    MONITORING_CONFIG,
    ProcessFailed,
    ReplicaProc,
    free_port,
    log_dir,
)

MODEL = "half_plus_two"
LATEST = 2


class Slot:
    """One replica at a fixed (REST, gRPC) port pair: start, signal, restart in place."""

    def __init__(self, name: str, config: pathlib.Path) -> None:
        self.name = name
        self.config = config
        self.rest_port = free_port()
        self.grpc_port = free_port()
        self.proc: ReplicaProc | None = None
        self.paused = False

    def argv(self) -> list[str]:
        monitoring = log_dir() / f"monitoring-{os.getpid()}.config"
        if not monitoring.exists():
            monitoring.write_text(MONITORING_CONFIG)
        return [sys.executable, "-m", "replica", f"--port={self.grpc_port}",
                f"--rest_api_port={self.rest_port}", "--host=127.0.0.1",
                f"--model_config_file={self.config}", f"--monitoring_config_file={monitoring}"]

    def spawn(self) -> None:
        """Start the replica process on this slot's ports (not waiting for it)."""
        assert self.proc is None or not self.proc.alive(), f"{self.name} is already running"
        env = {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = ReplicaProc(self.argv(), name=f"fault-{self.name}", rest_port=self.rest_port,
                                grpc_port=self.grpc_port, env=env)
        self.paused = False

    def wait_serving(self, timeout: float = 90.0) -> None:
        """Until the replica serves the latest version; stopped by pid if it never does."""
        assert self.proc is not None
        try:
            self.proc.wait_available(MODEL, LATEST, timeout=timeout)
        except ProcessFailed:
            self.proc.stop()
            raise

    def start(self, timeout: float = 90.0) -> None:
        self.spawn()
        self.wait_serving(timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGSTOP:
            self.paused = True
        elif sig == signal.SIGCONT:
            self.paused = False

    def kill(self) -> None:
        """SIGKILL by pid and reap: no goodbye on any socket."""
        assert self.proc is not None
        self.signal(signal.SIGKILL)
        self.proc.stop()

    def terminate(self) -> int | None:
        """SIGTERM by pid (the replica's graceful stop) and wait for it to exit."""
        assert self.proc is not None
        return self.proc.stop(timeout=20.0)

    def heal(self) -> None:
        if self.proc is not None and self.proc.alive():
            if self.paused:
                self.signal(signal.SIGCONT)
            self.proc.set_knobs(latency_ms=0, latency_jitter_ms=0, error_rate=0)
            return
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            if self.paused and self.proc.alive():
                self.signal(signal.SIGCONT)
            self.proc.stop()

    def cfg(self) -> dict[str, Any]:
        return {"name": self.name, "rest": f"127.0.0.1:{self.rest_port}",
                "grpc": f"127.0.0.1:{self.grpc_port}",
                "metrics": f"http://127.0.0.1:{self.rest_port}/monitoring/prometheus/metrics"}


@pytest.fixture(scope="package")
def trio(models_dir: pathlib.Path,  # noqa: F811
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Slot]]:
    cfg = model_config(models_dir, tmp_path_factory.mktemp("trio") / "models.config")
    slots = [Slot(f"r{i}", cfg) for i in range(3)]
    try:
        for s in slots:
            s.spawn()
        for s in slots:
            s.wait_serving()
        yield slots
    finally:
        for s in slots:
            s.stop()


@pytest.fixture
def fleet3(trio: list[Slot]) -> Iterator[list[Slot]]:
    """The trio, healed after the test whatever the drill did to it."""
    yield trio
    down = [s for s in trio if s.proc is None or not s.proc.alive()]
    for s in down:
        s.spawn()
    for s in trio:
        if s in down:
            s.wait_serving()
        else:
            s.heal()


@pytest.fixture
def gateway_on(tmp_path: pathlib.Path) -> Iterator[Callable[[dict[str, Any], str], GatewayProc]]:
    """make(cfg, engine): a gateway on that engine, stopped by pid after the test."""
    started: list[GatewayProc] = []

    def make(cfg: dict[str, Any], engine: str) -> GatewayProc:
        g = EngineGateway(cfg, tmp_path / f"gateway-{engine}-{len(started)}", engine,
                          name="gateway")
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


def drill_config(slots: list[Slot], **extra: Any) -> dict[str, Any]:
    """What an operator would run in front of a fleet that loses replicas.

    - health every 0.5 s with a 0.5 s probe timeout, fall 2 / rise 2: a dead replica leaves the
      rotation about a second after it stops answering, a restarted one rejoins after two good
      probes;
    - up to 3 attempts per call (connection failure or UNAVAILABLE goes to the next replica);
    - a per-try timeout of 1 s, well above the healthy p99 here (tens of ms) and far below the
      call deadline (10 s): a hung replica costs a call one second, not its whole deadline;
    - a retry floor (min_per_s 50, so 500 retries per 10 s window) sized to cover one replica of
      two going dark at 400 calls/s for the ~1.5 s the probes need to notice. The ratio part
      of the budget should cover that by itself, but after 10 s without a retry it counts no
      deposits at all (see test_retry_budget.py); the floor keeps the drills independent of it.
    """
    cfg: dict[str, Any] = {
        "replicas": [s.cfg() for s in slots],
        "health": {"interval_s": 0.5, "timeout_s": 0.5, "rise": 2, "fall": 2,
                   "metrics_interval_s": 1.0},
        "retries": {"max_attempts": 3, "per_try_timeout_s": 1.0, "min_per_s": 50},
        "models": {MODEL: {"timeout_s": 10}},
    }
    cfg.update(extra)
    return cfg
