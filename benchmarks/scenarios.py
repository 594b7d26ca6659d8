"""What the benchmark runs: targets, warm-up, interleaved repetitions, and the side figures
(latency at concurrency 1, routing work, start-up, memory, 1,000 connections, workers, a real
replica end to end).

What must always hold: every target answers the benchmark's request correctly before it is
measured (a fast wrong answer is not a result), and every process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import load, nginx, procs, protos
from benchmarks.load import RunResult

BUSY_POLL_US = 500
BUSY_NAME = f"gateway native, busy_poll_us {BUSY_POLL_US}"
GRPC_HEADERS = ["content-type: application/grpc", "te: trailers", "x-session-id: s1"]
LUA = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Session-Id"] = "s1"
"""


@dataclass
class Target:
    name: str
    url: str
    pid: int | None  # the process under test; None for the backend itself (reference row)


@dataclass
class Results:
    rest: dict[str, RunResult] = field(default_factory=dict)
    grpc: dict[str, RunResult] = field(default_factory=dict)
    latency_rest: dict[str, RunResult] = field(default_factory=dict)
    latency_grpc: dict[str, RunResult] = field(default_factory=dict)
    ready_s: dict[str, float] = field(default_factory=dict)
    rss_idle_mib: dict[str, float] = field(default_factory=dict)
    rss_loaded_mib: dict[str, float] = field(default_factory=dict)
    conn1000: dict[str, RunResult] = field(default_factory=dict)
    routing_us: float | None = None
    routing_us_no_session: float | None = None
    workers: dict[str, Any] = field(default_factory=dict)
    replica: dict[str, Any] = field(default_factory=dict)
    tracing: dict[str, Any] = field(default_factory=dict)
    against: list[str] = field(default_factory=list)  # target names of --against's gateways
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.procs = procs.Procs(workdir)
        self.sut = args.sut_cpu
        self.loadcpu = args.load_cpu
        self.engines = [e for e in args.engines.split(",") if e]
        self.results = Results()
        self.rest_targets: list[Target] = []
        self.grpc_targets: list[Target] = []
        self.gw_ports: dict[str, dict[str, int]] = {}
        self.gw_configs: dict[str, Path] = {}

    # ---- set-up ----------------------------------------------------------------------------

    def setup(self) -> None:
        w = self.workdir
        b_rest, b_grpc = procs.free_port(), procs.free_port()
        n_rest, n_grpc = procs.free_port(), procs.free_port()
        procs.start_nginx(self.procs, "backend", nginx.backend_conf(w, b_rest, b_grpc), self.loadcpu)
        proxy = procs.start_nginx(self.procs, "nginx-proxy",
                                  nginx.proxy_conf(w, n_rest, n_grpc, b_rest, b_grpc), self.sut)
        for port in (b_rest, b_grpc, n_rest, n_grpc):
            procs.wait_port(port)
        self.backend = (b_rest, b_grpc)
        self.lua = w / "post.lua"
        self.lua.write_text(LUA.format(body=protos.REST_PREDICT_BODY.decode()))
        self.grpc_req = w / "predict.grpc"
        self.grpc_req.write_bytes(protos.grpc_frame(protos.predict_request()))
        rest_path = "/v1/models/half_plus_two:predict"
        self.rest_targets = [Target("direct (backend)", f"http://127.0.0.1:{b_rest}{rest_path}", None),
                             Target("nginx proxy_pass", f"http://127.0.0.1:{n_rest}{rest_path}",
                                    proxy.pid)]
        self.grpc_targets = [
            Target("direct (backend)", f"http://127.0.0.1:{b_grpc}{protos.PREDICT_PATH}", None),
            Target("nginx grpc_pass", f"http://127.0.0.1:{n_grpc}{protos.PREDICT_PATH}", proxy.pid)]
        for engine in self.engines:
            cfg, ports = procs.gateway_config(w, f"gw-{engine}", b_rest, b_grpc, engine)
            proc, ready = procs.start_gateway(self.procs, f"gw-{engine}", cfg, self.sut,
                                              ports["admin"])
            self.gw_ports[engine], self.gw_configs[engine] = ports, cfg
            self.results.ready_s[engine] = ready
            name = f"gateway {engine}"
            self.rest_targets.append(Target(name, f"http://127.0.0.1:{ports['rest']}{rest_path}",
                                            proc.pid))
            self.grpc_targets.append(Target(name, f"http://127.0.0.1:{ports['grpc']}"
                                                  f"{protos.PREDICT_PATH}", proc.pid))
        for i, ref in enumerate(r for r in (self.args.against or "").split(",") if r):
            self._against(ref, i, b_rest, b_grpc, rest_path)
        if "native" in self.engines:
            # The latency runs also measure the native engine with busy polling on (idle
            # otherwise: it does not poll without calls in flight).
            cfg, ports = procs.gateway_config(w, "gw-native-busy", b_rest, b_grpc, "native",
                                              busy_poll_us=BUSY_POLL_US)
            proc, _ = procs.start_gateway(self.procs, "gw-native-busy", cfg, self.sut,
                                          ports["admin"])
            self.busy_rest = Target(BUSY_NAME, f"http://127.0.0.1:{ports['rest']}{rest_path}",
                                    proc.pid)
            self.busy_grpc = Target(BUSY_NAME, f"http://127.0.0.1:{ports['grpc']}"
                                               f"{protos.PREDICT_PATH}", proc.pid)
            check_rest(self.busy_rest.url)
            check_grpc(self.busy_grpc.url)
        for t in self.rest_targets:
            check_rest(t.url)
        for t in self.grpc_targets:
            check_grpc(t.url)
        for engine in self.engines:
            pid = self.procs.procs[f"gw-{engine}"].pid
            self.results.rss_idle_mib[engine] = load.rss_mib(load.family(pid))

    def _against(self, ref: str, i: int, b_rest: int, b_grpc: int, rest_path: str) -> None:
        """--against REF: the native gateway of another commit, measured beside this one."""
        tree = self.workdir / f"against-{i}"
        sha = procs.export_commit(ref, tree)
        cfg, ports = procs.gateway_config(self.workdir, f"gw-against-{i}", b_rest, b_grpc,
                                          "native")
        proc, _ = procs.start_gateway(self.procs, f"gw-against-{i}", cfg, self.sut,
                                      ports["admin"], source=tree)
        name = f"gateway native @ {sha}"
        self.results.against.append(name)
        self.rest_targets.append(Target(name, f"http://127.0.0.1:{ports['rest']}{rest_path}",
                                        proc.pid))
        self.grpc_targets.append(Target(name, f"http://127.0.0.1:{ports['grpc']}"
                                              f"{protos.PREDICT_PATH}", proc.pid))

    def teardown(self) -> None:
        self.procs.stop_all()

    # ---- runs ------------------------------------------------------------------------------

    def _rest(self, t: Target, conns: int, seconds: float, timeout_s: int = 2) -> RunResult:
        pids = load.family(t.pid) if t.pid else None
        return load.wrk(t.url, conns, seconds, self.lua, self.loadcpu, pids, timeout_s=timeout_s)

    def _grpc(self, t: Target, clients: int, streams: int, seconds: float,
              latency: bool = True) -> RunResult:
        pids = load.family(t.pid) if t.pid else None
        log = self.workdir / "h2load.log" if latency else None
        return load.h2load(t.url, clients, streams, seconds, self.grpc_req, GRPC_HEADERS,
                           self.loadcpu, pids, log)

    def _interleave(self, targets: list[Target], run: Any, reps: int) -> dict[str, RunResult]:
        runs: dict[str, list[RunResult]] = {t.name: [] for t in targets}
        for _ in range(reps):
            for t in targets:
                runs[t.name].append(run(t))
        return {name: load.median_result(rs) for name, rs in runs.items()}

    def run(self, parts: set[str]) -> Results:
        a, r = self.args, self.results
        if "rest" in parts:
            for t in self.rest_targets:
                self._rest(t, a.rest_conns, a.warmup)
            r.rest = self._interleave(self.rest_targets,
                                      lambda t: self._rest(t, a.rest_conns, a.duration), a.reps)
        if "grpc" in parts:
            for t in self.grpc_targets:
                self._grpc(t, a.grpc_clients, a.grpc_streams, a.warmup, latency=False)
            r.grpc = self._interleave(
                self.grpc_targets,
                lambda t: self._grpc(t, a.grpc_clients, a.grpc_streams, a.duration), a.reps)
        if "latency" in parts:
            secs = max(1.0, a.duration / 2)
            rest, grpc = self.rest_targets, self.grpc_targets
            if "native" in self.engines:
                rest, grpc = rest + [self.busy_rest], grpc + [self.busy_grpc]
            r.latency_rest = self._interleave(rest, lambda t: self._rest(t, 1, secs), a.reps)
            r.latency_grpc = self._interleave(grpc, lambda t: self._grpc(t, 1, 1, secs), a.reps)
        if "limits" in parts and "native" in self.engines:
            self._limits()
        if "routing" in parts and self.engines:
            self._routing()
        if "workers" in parts:
            from benchmarks.workers import run_workers

            r.workers = run_workers(self)
        if "replica" in parts:
            from benchmarks.replica_e2e import run_replica

            r.replica = run_replica(self)
        if "tracing" in parts and "native" in self.engines:
            from benchmarks.tracing import run_tracing

            r.tracing = run_tracing(self)
        return r

    def _limits(self) -> None:
        """1,000 concurrent client connections held on the native gateway, then memory."""
        engine = "native"
        pid = self.procs.procs[f"gw-{engine}"].pid
        t = next(t for t in self.rest_targets if t.name == f"gateway {engine}")
        g = next(t for t in self.grpc_targets if t.name == f"gateway {engine}")
        # Held means served: a generous timeout, so a slow second does not count as dropped.
        self.results.conn1000["rest"] = self._rest(t, 1000, 3.0, timeout_s=10)
        self.results.conn1000["grpc"] = self._grpc(g, 1000, 1, 3.0, latency=False)
        self.results.rss_loaded_mib[engine] = load.rss_mib(load.family(pid))

    def _routing(self) -> None:
        engine = "native" if "native" in self.engines else self.engines[0]
        out = subprocess.run(["taskset", "-c", self.sut, sys.executable, "-m", "benchmarks.routing",
                              "--config", str(self.gw_configs[engine]), "--calls", "30000"],
                             capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, PYTHONPATH=str(procs.ROOT)))
        try:
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            self.results.routing_us = float(figures["us_per_call"])
            self.results.routing_us_no_session = float(figures["us_per_call_no_session"])
        except (ValueError, IndexError, KeyError):
            self.results.notes.append(f"routing measurement failed: {out.stderr[-500:]}")


def check_rest(url: str) -> None:
    import urllib.request

    req = urllib.request.Request(url, data=protos.REST_PREDICT_BODY, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
    if body != protos.REST_PREDICT_ANSWER:
        raise RuntimeError(f"{url} answered {body[:200]!r}, not the fixed prediction")


def check_grpc(url: str) -> None:
    import grpc

    hostport = url.split("//", 1)[1].split("/", 1)[0]
    with grpc.insecure_channel(hostport) as ch:
        stub: Any = ch.unary_unary(protos.PREDICT_PATH)
        reply = stub(protos.predict_request(), timeout=5, metadata=(("x-session-id", "s1"),))
    if reply != protos.predict_response():
        raise RuntimeError(f"{url} answered {reply[:200]!r}, not the fixed prediction")
