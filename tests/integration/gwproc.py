"""Start the gateway as a real subprocess for integration tests, on free loopback ports."""

from __future__ import annotations

import json
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

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


class GatewayProc:
    def __init__(self, cfg: dict[str, Any], workdir: Path, name: str = "gateway",
                 ready_timeout: float = 30.0, wait_ready: bool = True,
                 listen: dict[str, Any] | None = None) -> None:
        """`listen`: keys added to the listen section (engine, busy_poll_us, ...); the addresses
        are always free ports on 127.0.0.1. A port taken between choosing it and binding it
        (another process's outgoing connection may get it) is chosen again, up to 3 times."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        for attempt in range(3):
            self._start(cfg, listen)
            if not wait_ready:
                return
            try:
                self.wait_ready(ready_timeout)
                return
            except RuntimeError:
                if attempt == 2 or "address already in use" not in self.log():
                    raise
                self._log.close()

    def _start(self, cfg: dict[str, Any], listen: dict[str, Any] | None) -> None:
        self.rest_port, self.grpc_port, self.admin_port = free_port(), free_port(), free_port()
        cfg = dict(cfg)
        tls = cfg.pop("tls", None)
        cfg["listen"] = {**(listen or {}), "rest": f"127.0.0.1:{self.rest_port}",
                         "grpc": f"127.0.0.1:{self.grpc_port}",
                         "admin": f"127.0.0.1:{self.admin_port}"}
        if tls:
            cfg["listen"]["tls"] = tls
        cfg.setdefault("health", {"interval_s": 0.5, "timeout_s": 1.0, "metrics_interval_s": 0.5})
        self.cfg = cfg
        self.write_config(cfg)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.commands.cli", "run", "--config", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.pid = self.proc.pid

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write_config(self, cfg: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        os.replace(tmp, self.config_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                status, _, _ = http("GET", self.admin_url + "/readyz", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready after {timeout} s:\n{self.log()[-3000:]}")

    def api(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        status, _, out = http(method, self.admin_url + path, body)
        return status, json.loads(out) if out else None

    def metrics(self) -> str:
        return http("GET", self.admin_url + "/metrics")[2].decode()

    def reload(self, cfg: dict[str, Any]) -> tuple[int, Any]:
        cfg = dict(cfg)
        cfg["listen"] = self.cfg["listen"]
        cfg.setdefault("health", self.cfg["health"])
        self.write_config(cfg)
        return self.api("/api/reload", "POST")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


class EngineGateway(GatewayProc):
    """A GatewayProc on one data-path engine (listen.engine: "native" or "compat"); further
    keyword arguments are other keys of the listen section."""

    def __init__(self, cfg: dict[str, Any], workdir: Path, engine: str,
                 name: str | None = None, **listen: Any) -> None:
        self.engine = engine
        super().__init__(cfg, workdir, name=name or f"gateway-{engine}",
                         listen={"engine": engine, **listen})
