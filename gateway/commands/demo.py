"""`infergate demo`: two local replicas serving real SavedModels, a gateway in front, sample
traffic, and where to look.

Everything runs as child processes of this command on 127.0.0.1; Ctrl-C (or --duration) stops
every one of them by pid. The demo itself never imports TensorFlow: the replicas do.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_or_free(port: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return _free_port()


def _http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
          timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _wait(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early; see {log}:\n{log.read_text()[-2000:]}")
        try:
            status, _, _ = _http("GET", url, timeout=1.0)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s; see {log}")


class Fleet:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / f"{name}.log"
        out = open(log, "wb")  # noqa: SIM115 - closed when the process is reaped
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


def _compact(raw: bytes) -> str:
    try:
        return json.dumps(json.loads(raw))
    except ValueError:
        return raw.decode(errors="replace").strip()


def _traffic(rest: str) -> None:
    body = {"instances": [1.0, 2.0, 5.0]}
    by_version: collections.Counter[str] = collections.Counter()
    by_replica: collections.Counter[str] = collections.Counter()
    lat: list[float] = []
    n = 200
    for i in range(n):
        t0 = time.perf_counter()
        status, h, out = _http("POST", f"{rest}/v1/models/half_plus_two:predict", body,
                               {"x-user-id": f"user-{i}"})
        lat.append(time.perf_counter() - t0)
        if status == 200:
            by_version[h.get("x-infergate-version", "?")] += 1
            by_replica[h.get("x-infergate-replica", "?")] += 1
    lat.sort()
    print(f"\n{n} REST predictions through the gateway, split stable 90 / canary 10 by x-user-id:")
    for v, c in sorted(by_version.items()):
        status, _, out = _http("POST", f"{rest}/v1/models/half_plus_two/versions/{v}:predict", body)
        print(f"  version {v}: {c:4d} calls  ({_compact(out)})")
    print("  by replica: " + ", ".join(f"{r}={c}" for r, c in sorted(by_replica.items()))
          + "   (least_loaded: replica-0 reports 35 % GPU, replica-1 60 %)")
    print(f"  latency p50 {lat[n // 2] * 1000:.1f} ms, p99 {lat[int(n * 0.99)] * 1000:.1f} ms")
    _, h, out = _http("POST", f"{rest}/v1/models/half_plus_two:predict", body,
                      {"x-canary": "always"})
    print(f"\nheader rule x-canary: always -> version {h.get('x-infergate-version')}: "
          f"{_compact(out)}")
    _, h, out = _http("POST", f"{rest}/v1/models/half_plus_two/labels/stable:predict", body)
    print(f"label 'stable' (gateway-side) -> version {h.get('x-infergate-version')}: "
          f"{_compact(out)}")
    pinned = {(_http("POST", f"{rest}/v1/models/half_plus_two:predict", body,
                     {"x-session-id": "session-42"})[1].get("x-infergate-replica")) for _ in range(20)}
    print(f"sticky x-session-id: session-42 -> {sorted(str(p) for p in pinned)} over 20 calls")
    status, _, out = _http("POST", f"{rest}/v1/models/no_such_model:predict", body)
    print(f"unknown model -> {status} {_compact(out)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="infergate demo")
    ap.add_argument("--duration", type=float, default=None,
                    help="stop after this many seconds (default: run until Ctrl-C)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="infergate-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(workdir)
    py = sys.executable
    try:
        models = workdir / "models"
        if not (models / "half_plus_two" / "2").exists():
            print(f"writing test SavedModels into {models} ...", flush=True)
            subprocess.run([py, "-m", "gateway.commands.cli", "make-test-models", str(models)], check=True,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        model_config = workdir / "models.config"
        model_config.write_text(
            'model_config_list {\n  config {\n    name: "half_plus_two"\n'
            f'    base_path: "{models / "half_plus_two"}"\n    model_platform: "tensorflow"\n'
            "    model_version_policy { all {} }\n  }\n}\n")
        monitoring = workdir / "monitoring.config"
        monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
        replicas = []
        for i, gpu in enumerate([0.35, 0.6]):
            rest, grpc = _free_port(), _free_port()
            proc, log = fleet.start(f"replica-{i}", [
                py, "-m", "replica", f"--port={grpc}", f"--rest_api_port={rest}", "--host=127.0.0.1",
                f"--model_config_file={model_config}", f"--monitoring_config_file={monitoring}",
                f"--gpu_util={gpu}"])
            replicas.append((f"replica-{i}", rest, grpc, proc, log))
        print("starting 2 replicas (TensorFlow takes a few seconds) ...", flush=True)
        for _name, rest, _grpc, proc, log in replicas:
            _wait(f"http://127.0.0.1:{rest}/v1/models/half_plus_two", 120, proc, log)
        g_rest, g_grpc, g_admin = _port_or_free(8501), _port_or_free(8500), _port_or_free(9901)
        cfg = workdir / "gateway.yaml"
        lines = [f'listen: {{rest: "127.0.0.1:{g_rest}", grpc: "127.0.0.1:{g_grpc}", '
                 f'admin: "127.0.0.1:{g_admin}"}}', "replicas:"]
        for name, rest, grpc, _p, _l in replicas:
            lines.append(f'  - {{name: {name}, rest: "127.0.0.1:{rest}", grpc: "127.0.0.1:{grpc}", '
                         f'metrics: "http://127.0.0.1:{rest}/monitoring/prometheus/metrics", '
                         "capacity_rps: 200}")
        lines += [
            "health: {interval_s: 1, metrics_interval_s: 1}",
            "models:", "  half_plus_two:", "    labels: {stable: 1, canary: 2}",
            "    routes:", "      - match: {headers: {x-canary: always}}", "        split: {canary: 100}",
            "      - split: {stable: 90, canary: 10}", "        bucket_by: x-user-id",
            "    sticky: {header: x-session-id}", "    balance: least_loaded",
            "autoscale:", "  default: {min_replicas: 1, max_replicas: 8, window_up_s: 10, window_down_s: 30}",
        ]
        cfg.write_text("\n".join(lines) + "\n")
        proc, log = fleet.start("gateway", [py, "-m", "gateway.commands.cli", "run", "--config", str(cfg)])
        _wait(f"http://127.0.0.1:{g_admin}/readyz", 30, proc, log)
        rest_url = f"http://127.0.0.1:{g_rest}"
        print(f"gateway ready: REST {rest_url}  gRPC 127.0.0.1:{g_grpc}  admin http://127.0.0.1:{g_admin}")
        _traffic(rest_url)
        print(f"""
Where to look:
  dashboard      http://127.0.0.1:{g_admin}/
  metrics        http://127.0.0.1:{g_admin}/metrics
  replicas       http://127.0.0.1:{g_admin}/api/replicas
  scale signals  http://127.0.0.1:{g_admin}/api/scale
  config         {cfg}   (edit it: the gateway reloads on save)
  logs           {workdir}/*.log
Try:  curl -d '{{"instances": [1.0, 2.0, 5.0]}}' {rest_url}/v1/models/half_plus_two:predict
Ctrl-C stops everything.""", flush=True)
        end = None if args.duration is None else time.monotonic() + args.duration
        while end is None or time.monotonic() < end:
            for p in fleet.procs:
                if p.poll() is not None:
                    print(f"a demo process exited (code {p.returncode}); see {workdir}/*.log")
                    return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        fleet.stop()


if __name__ == "__main__":
    sys.exit(main())
