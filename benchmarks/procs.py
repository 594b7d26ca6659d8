"""Processes the benchmark starts: nginx (backend and baseline), gateways, a TF replica.

What must always hold: every process is started pinned with taskset and recorded in `Procs`,
and `Procs.stop_all` stops each one by its pid (SIGTERM, then SIGKILL after a grace period),
whatever happened in between.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


class Procs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], cpu: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - kept for the process
        full_env = dict(os.environ, PYTHONPATH=str(cwd or ROOT), **(env or {}))
        proc = subprocess.Popen(["taskset", "-c", cpu, *cmd], stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, cwd=cwd or ROOT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self, name: str, grace: float = 5.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def export_commit(ref: str, dest: Path) -> str:
    """The source tree of commit `ref` of this repository, unpacked into `dest`; its short id."""
    sha = subprocess.run(["git", "rev-parse", "--short", f"{ref}^{{commit}}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", "--format=tar", sha], cwd=ROOT,
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {ref} failed")
    return sha


def start_nginx(procs: Procs, name: str, conf: Path, cpu: str) -> subprocess.Popen[bytes]:
    return procs.start(name, ["/usr/sbin/nginx", "-c", str(conf), "-e", str(conf.parent / "err.log")],
                       cpu)


def gateway_config(workdir: Path, name: str, backend_rest: int, backend_grpc: int,
                   engine: str, busy_poll_us: int = 0,
                   extra: dict[str, Any] | None = None) -> tuple[Path, dict[str, int]]:
    """Routing on (split + sticky + least_loaded, metrics always on), cache off; two replica
    entries on the same backend so the balancer has a choice to make. `extra`: more top-level
    sections (e.g. `tracing`)."""
    ports = {"rest": free_port(), "grpc": free_port(), "admin": free_port()}
    cfg: dict[str, Any] = {
        "listen": {"rest": f"127.0.0.1:{ports['rest']}", "grpc": f"127.0.0.1:{ports['grpc']}",
                   "admin": f"127.0.0.1:{ports['admin']}", "engine": engine,
                   "busy_poll_us": busy_poll_us},
        "replicas": [
            {"name": f"r{i}", "rest": f"127.0.0.1:{backend_rest}",
             "grpc": f"127.0.0.1:{backend_grpc}"} for i in (1, 2)],
        "models": {"half_plus_two": {
            "labels": {"stable": 1, "canary": 1},
            "routes": [{"split": {"stable": 90, "canary": 10}}],
            "sticky": {"header": "x-session-id"},
            "balance": "least_loaded",
        }},
        "health": {"interval_s": 2.0, "timeout_s": 1.0},
        **(extra or {}),
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, ports


def start_gateway(procs: Procs, name: str, config: Path, cpu: str, admin_port: int,
                  workers: int = 1, source: Path | None = None
                  ) -> tuple[subprocess.Popen[bytes], float]:
    """Start a gateway and wait for /readyz; returns the process and seconds from exec to ready.
    `source`: run the gateway from that source tree (another commit's) instead of this one."""
    t0 = time.monotonic()
    tree = source or ROOT
    module = ("gateway.commands.cli" if (tree / "gateway/commands/cli.py").exists()
              else "gateway.cli")  # the entry point's home before the package split
    cmd = [sys.executable, "-m", module, "--log-level", "WARNING", "run", "--config", str(config)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    proc = procs.start(name, cmd, cpu, cwd=source)
    end = t0 + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway {name} exited:\n{procs.log(name)}")
        try:
            if http_status(f"http://127.0.0.1:{admin_port}/readyz", 0.5) == 200:
                return proc, time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"gateway {name} not ready:\n{procs.log(name)}")
