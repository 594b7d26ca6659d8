"""Real processes for tests: free ports, a generic managed process, replicas and redis.

Everything here talks to processes over sockets on 127.0.0.1 and stops them by pid (SIGTERM,
then SIGKILL). Each process writes its output to a log file whose tail is put into the error
when the process fails to come up. This module must not import TensorFlow: test workers that
only start processes stay light.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MONITORING_CONFIG = 'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n'
METRICS_PATH = "/monitoring/prometheus/metrics"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_dir() -> pathlib.Path:
    path = pathlib.Path(tempfile.gettempdir()) / "infergate-test-logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_post(
    url: str,
    body: bytes | str | dict[str, Any],
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """(status, body) of a POST; a dict body is sent as JSON."""
    data = (
        json.dumps(body).encode()
        if isinstance(body, dict)
        else (body.encode() if isinstance(body, str) else body)
    )
    request = urllib.request.Request(url, data=data, method="POST", headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class ProcessFailed(RuntimeError):
    """A managed process exited or did not become ready; the message holds its log tail."""


class ManagedProcess:
    """A child process with its output in a log file, waited on by readiness checks, stopped by pid."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: pathlib.Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.log_path = log_path or log_dir() / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], *, timeout: float = 60.0, what: str = "ready") -> None:
        """Poll ``ready`` until true; fail with the log tail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise ProcessFailed(
                    f"{self.name} (pid {self.pid}) exited with {self.returncode} before it was {what}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass  # not listening yet, or a half-written answer: poll again
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"{self.name} (pid {self.pid}) not {what} after {timeout:.0f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def wait_for_port(self, port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
        def listening() -> bool:
            with socket.create_connection((host, port), timeout=0.5):
                return True

        self.wait_until(listening, timeout=timeout, what=f"listening on {host}:{port}")

    def wait_for_url(self, url: str, *, status: int = 200, timeout: float = 60.0) -> None:
        self.wait_until(
            lambda: http_get(url, timeout=2.0)[0] == status, timeout=timeout, what=f"answering {url}"
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by pid, then SIGKILL by pid if it has not exited within ``timeout``."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self._proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass  # exited between the check and the signal
        self._proc.wait()
        self._log.close()
        return self._proc.returncode

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- replicas


class ReplicaProc(ManagedProcess):
    """A ``python -m replica`` process on free ports of 127.0.0.1."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        rest_port: int,
        grpc_port: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(argv, name=name, env=env, cwd=REPO_ROOT)
        self.rest_port = rest_port
        self.grpc_port = grpc_port

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def model_status(self, model: str) -> list[dict[str, Any]]:
        """The model_version_status list of GET /v1/models/<model> ([] when unknown)."""
        status, body = http_get(f"{self.rest_url}/v1/models/{model}")
        if status != 200:
            return []
        return list(json.loads(body)["model_version_status"])

    def wait_available(self, model: str, version: int | None = None, timeout: float = 60.0) -> None:
        def available() -> bool:
            return any(
                s["state"] == "AVAILABLE" and (version is None or int(s["version"]) == version)
                for s in self.model_status(model)
            )

        self.wait_until(available, timeout=timeout, what=f"serving {model}")

    def set_knobs(self, **knobs: float | None) -> dict[str, Any]:
        """POST /infergate/knobs, e.g. set_knobs(latency_ms=50, error_rate=0.2, gpu_util=0.9)."""
        status, body = http_post(f"{self.rest_url}/infergate/knobs", dict(knobs))
        if status != 200:
            raise ValueError(body.decode())
        return dict(json.loads(body))

    def metrics_text(self) -> str:
        status, body = http_get(self.rest_url + METRICS_PATH)
        if status != 200:
            raise ProcessFailed(f"{self.name}: metrics answered {status} (monitoring off?)")
        return body.decode()

    def request_count(self, model: str, status: str | None = None) -> int:
        """Inference calls (predict/classify/regress/multi-inference, REST and gRPC) for ``model``.

        Read from infergate_replica_inference_total, which unlike TF Serving's request_count does
        not count status and metadata calls. ``status`` (e.g. "OK", "UNAVAILABLE") narrows it.
        """
        return _sum_counter(self.metrics_text(), "infergate_replica_inference_total", model, status)

    def tf_request_count(self, model: str, status: str | None = None) -> int:
        """TF Serving's own :tensorflow:serving:request_count (REST status calls included)."""
        return _sum_counter(self.metrics_text(), ":tensorflow:serving:request_count", model, status)


_SAMPLE = re.compile(r"^(?P<name>[^{\s]+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _sum_counter(text: str, metric: str, model: str, status: str | None) -> int:
    total = 0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group("name") != metric:
            continue
        labels = dict(_LABEL.findall(match.group("labels")))
        if labels.get("model_name") == model and (status is None or labels.get("status") == status):
            total += int(float(match.group("value")))
    return total


def start_replica(
    base_path_or_config: str | os.PathLike[str],
    *,
    name: str = "r",
    model_name: str = "half_plus_two",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    monitoring: bool = True,
    wait_available: bool = True,
    timeout: float = 90.0,
) -> ReplicaProc:
    """Start a replica on free ports and wait until ``model_name`` has an AVAILABLE version.

    ``base_path_or_config`` is a model base path (served as ``model_name``) or a text-proto
    model config file. Monitoring is on (Prometheus at /monitoring/prometheus/metrics) unless
    ``monitoring=False``. A start that loses a port race is retried on new ports.
    """
    source = pathlib.Path(base_path_or_config)
    model_args = (
        [f"--model_config_file={source}"]
        if source.is_file()
        else [f"--model_name={model_name}", f"--model_base_path={source}"]
    )
    child_env = {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    last_error: ProcessFailed | None = None
    for _ in range(3):
        rest_port, grpc_port = free_port(), free_port()
        args = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1", *model_args]
        if monitoring:
            config = log_dir() / f"monitoring-{os.getpid()}.config"
            if not config.exists():
                config.write_text(MONITORING_CONFIG)
            args.append(f"--monitoring_config_file={config}")
        argv = [sys.executable, "-m", "replica", *args, *extra_args]
        replica = ReplicaProc(
            argv, name=f"replica-{name}", rest_port=rest_port, grpc_port=grpc_port, env=child_env
        )
        try:
            if wait_available:
                replica.wait_available(model_name, timeout=timeout)
            else:
                replica.wait_for_port(rest_port, timeout=timeout)
            return replica
        except ProcessFailed as exc:
            replica.stop()
            last_error = exc
            if "Cannot listen" not in replica.log_text():
                raise
    assert last_error is not None
    raise last_error


# ---------------------------------------------------------------- redis


class RedisProc(ManagedProcess):
    def __init__(self, argv: Sequence[str], *, port: int) -> None:
        super().__init__(argv, name="redis")
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis(timeout: float = 20.0) -> RedisProc:
    """redis-server on a free port of 127.0.0.1, without persistence."""
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="infergate-redis-")
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        data_dir,
        "--daemonize",
        "no",
    ]
    redis = RedisProc(argv, port=port)
    try:
        redis.wait_for_port(port, timeout=timeout)
    except ProcessFailed:
        redis.stop()
        raise
    return redis
