"""Cache benchmark: the cache-hit path against the replica itself, and the cost of the cache on
misses, all measured in one run (`python -m benchmarks.cache`).

A real TF replica (`python -m replica`) serves half_plus_two; two gateways front it, one with
the exact-match cache on and one with it off (both native engine, routing on). wrk sends REST
predicts in interleaved repetitions:
- `direct`: the same body to the replica;            - `hit`: the same body, cache on;
- `miss, cache off` / `miss, cache on`: a new body every call (a counter in the body), so every
  call on the cache-on gateway is a miss that is looked up, coalesced and stored.
Printed: req/s and the two ratios the issue sets: hit / direct (goal >= 3x) and the miss-path
overhead 1 - (miss, cache on) / (miss, cache off) (goal < 5 %). The gateways run on core 0, wrk
and the replica on core 1.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = '{"instances": [1.0, 2.0, 5.0]}'
FIXED = f'wrk.method = "POST"\nwrk.body = \'{BODY}\'\nwrk.headers["Content-Type"] = "application/json"\n'
UNIQUE = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
init = function(args)
  n = tonumber(args[1]) or 0  -- each run starts where no earlier run has been
end
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"instances": [' .. n .. '.25, 2.0]}')
end
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ok(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def wrk(url: str, script: Path, seconds: float, conns: int, run: int) -> float:
    """req/s of one wrk run; `run` numbers the run so unique bodies never repeat across runs."""
    offset = str(run * 10_000_000)
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}",
                          f"-d{max(1, round(seconds))}s", "-s", str(script), url, "--", offset],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or "Non-2xx" in out:
        raise RuntimeError(f"wrk failed or saw errors:\n{out}")
    return float(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cache")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="infergate-cache-bench-"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, cmd: list[str], cpu: str) -> None:
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(["taskset", "-c", cpu, *cmd], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=ROOT))

    try:
        subprocess.run([sys.executable, "-m", "replica.testmodels", str(work / "models")],
                       check=True, env=env, cwd=ROOT, capture_output=True)
        r_rest, r_grpc = free_port(), free_port()
        start("replica", [sys.executable, "-m", "replica", f"--port={r_grpc}",
                          f"--rest_api_port={r_rest}", "--host=127.0.0.1",
                          "--model_name=half_plus_two",
                          f"--model_base_path={work / 'models' / 'half_plus_two'}"], "1")
        wait_ok(f"http://127.0.0.1:{r_rest}/v1/models/half_plus_two", 120)
        ports = {}
        caches = (("on", "cache: {exact: {ttl_s: 600, max_bytes: 268435456}}"), ("off", ""))
        for name, cache in caches:
            rest, grpc, admin = free_port(), free_port(), free_port()
            ports[name] = rest
            cfg = work / f"gw-{name}.yaml"
            cfg.write_text(
                f'listen: {{rest: "127.0.0.1:{rest}", grpc: "127.0.0.1:{grpc}", '
                f'admin: "127.0.0.1:{admin}"}}\n'
                f'replicas: [{{name: r0, rest: "127.0.0.1:{r_rest}", grpc: "127.0.0.1:{r_grpc}"}}]\n'
                "models:\n  half_plus_two:\n    balance: least_loaded\n"
                + (f"    {cache}\n" if cache else ""))
            start(f"gateway-{name}",
                  [sys.executable, "-m", "gateway.commands.cli", "run", "--config", str(cfg)], "0")
            wait_ok(f"http://127.0.0.1:{admin}/readyz", 30)
        fixed, unique = work / "fixed.lua", work / "unique.lua"
        fixed.write_text(FIXED)
        unique.write_text(UNIQUE)
        path = "/v1/models/half_plus_two:predict"
        runs = {
            "direct (replica)": (f"http://127.0.0.1:{r_rest}{path}", fixed),
            "gateway, cache hit": (f"http://127.0.0.1:{ports['on']}{path}", fixed),
            "gateway, miss, cache off": (f"http://127.0.0.1:{ports['off']}{path}", unique),
            "gateway, miss, cache on": (f"http://127.0.0.1:{ports['on']}{path}", unique),
        }
        run = itertools.count(1)
        for url, script in runs.values():  # warm-up (and the hit run's first miss)
            wrk(url, script, 1.0, args.connections, next(run))
        got: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.reps):
            for k, (url, script) in runs.items():
                got[k].append(wrk(url, script, args.duration, args.connections, next(run)))
        med = {k: statistics.median(v) for k, v in got.items()}
        title = f"REST predict, {args.connections} connections"
        print(f"\n{title:36s} {'req/s (median)':>16s}")
        for k, v in med.items():
            print(f"{k:36s} {v:16,.0f}")
        hit = med["gateway, cache hit"] / med["direct (replica)"]
        overhead = 1 - med["gateway, miss, cache on"] / med["gateway, miss, cache off"]
        verdict = "met" if hit >= 3 else "MISSED"
        print(f"\ncache hit / direct replica: {hit:.2f}x  (goal >= 3x: {verdict})")
        print(f"miss-path overhead of the cache: {overhead * 100:.1f} %  "
              f"(goal < 5 %: {'met' if overhead < 0.05 else 'MISSED'})")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
