"""`infergate run --workers 2` on the native engine: two processes share the REST and gRPC
ports (SO_REUSEPORT), both take connections, the first one alone serves the admin API, and
SIGTERM to the parent stops every worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml

from tests.integration.conftest import Fleet
from tests.integration.gwproc import ROOT, free_port, http

pytestmark = pytest.mark.integration


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(entry))
            except OSError:
                continue
    return out


def _listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (from /proc/net/tcp)."""
    hexport = f"{port:04X}"
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if local.endswith(":" + hexport) and state == "0A":
                n += 1
    return n


def test_two_workers_share_the_ports(fleet: Fleet, tmp_path: Path) -> None:
    rest, grpc_port, admin = free_port(), free_port(), free_port()
    cfg = {"listen": {"rest": f"127.0.0.1:{rest}", "grpc": f"127.0.0.1:{grpc_port}",
                      "admin": f"127.0.0.1:{admin}", "engine": "native"},
           "replicas": fleet.replica_cfg(), "health": {"interval_s": 0.5}}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.commands.cli", "run", "--config", str(path),
                             "--workers", "2"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if _listeners(rest) == 2 and _listeners(grpc_port) == 2:
                try:
                    if http("GET", f"http://127.0.0.1:{admin}/readyz", timeout=1)[0] == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "gw.log").read_text()[-3000:])
        workers = _children(proc.pid)
        assert len(workers) == 2
        assert _listeners(admin) == 1
        for _ in range(10):
            status, h, _ = http("GET", f"http://127.0.0.1:{rest}/v1/models/half_plus_two")
            assert status == 200 and h["x-infergate-replica"] in {"r0", "r1"}
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            stub = ch.unary_unary("/tensorflow.serving.ModelService/GetModelStatus")
            assert stub(b"\x0a\x0f\x0a\x0dhalf_plus_two", timeout=10)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not any(os.path.exists(f"/proc/{w}") for w in workers)
    finally:
        if proc.poll() is None:
            for w in _children(proc.pid):
                os.kill(w, signal.SIGKILL)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
