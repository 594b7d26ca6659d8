"""End to end through the gateway to a real TF replica (`python -m replica`): the same REST and
gRPC predicts as the fixed-answer rows, answered by TensorFlow.

What must always hold: if the replica cannot be started (TensorFlow missing, the replica
package not there, models not buildable in time), the rows are skipped with the reason and the
rest of the run stands; every process started here is stopped by the harness.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

from benchmarks import load, procs, protos

if TYPE_CHECKING:
    from benchmarks.scenarios import Bench


def _wait_available(rest_port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    url = f"http://127.0.0.1:{rest_port}/v1/models/{protos.MODEL}"
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                states = [v["state"] for v in json.loads(resp.read())["model_version_status"]]
                if "AVAILABLE" in states:
                    return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"replica not AVAILABLE after {timeout:.0f} s")


def run_replica(bench: Bench) -> dict[str, Any]:
    if importlib.util.find_spec("replica.server") is None:
        return {"skipped": "replica.server is not available"}
    if importlib.util.find_spec("tensorflow") is None:
        return {"skipped": "TensorFlow is not installed"}
    models = bench.workdir / "models"
    made = subprocess.run([sys.executable, "-m", "replica.testmodels", str(models)],
                          capture_output=True, text=True, timeout=600, cwd=procs.ROOT,
                          env={"PYTHONPATH": str(procs.ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                               "PATH": "/usr/bin:/bin"})
    if made.returncode != 0:
        return {"skipped": f"could not build test models: {made.stderr[-300:]}"}
    rest, grpc_port = procs.free_port(), procs.free_port()
    bench.procs.start("replica", [sys.executable, "-m", "replica", f"--port={grpc_port}",
                                  f"--rest_api_port={rest}", "--host=127.0.0.1",
                                  f"--model_name={protos.MODEL}",
                                  f"--model_base_path={models / protos.MODEL}"],
                      bench.loadcpu, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        _wait_available(rest, 120)
    except RuntimeError as exc:
        return {"skipped": f"{exc}: {bench.procs.log('replica')[-300:]}"}
    cfg, ports = procs.gateway_config(bench.workdir, "gw-e2e", rest, grpc_port, "native")
    proc, _ = procs.start_gateway(bench.procs, "gw-e2e", cfg, bench.sut, ports["admin"])
    pids = load.family(proc.pid)
    secs = bench.args.duration
    path = f"/v1/models/{protos.MODEL}:predict"
    rows: dict[str, load.RunResult] = {}
    rest_targets = {"REST direct to replica": (f"http://127.0.0.1:{rest}{path}", None),
                    "REST via gateway (native)": (f"http://127.0.0.1:{ports['rest']}{path}", pids)}
    grpc_targets = {
        "gRPC direct to replica": f"http://127.0.0.1:{grpc_port}{protos.PREDICT_PATH}",
        "gRPC via gateway (native)": f"http://127.0.0.1:{ports['grpc']}{protos.PREDICT_PATH}"}
    runs: dict[str, list[load.RunResult]] = {k: [] for k in [*rest_targets, *grpc_targets]}
    for _ in range(bench.args.reps):
        for name, (url, p) in rest_targets.items():
            runs[name].append(load.wrk(url, 16, secs, bench.lua, bench.loadcpu, p))
        for name, url in grpc_targets.items():
            p = pids if "gateway" in name else None
            runs[name].append(load.h2load(url, 4, 4, secs, bench.grpc_req,
                                          ["content-type: application/grpc", "te: trailers"],
                                          bench.loadcpu, p, bench.workdir / "h2load.log"))
    for name, rs in runs.items():
        rows[name] = load.median_result(rs)
    bench.procs.stop("gw-e2e")
    bench.procs.stop("replica")
    return {"runs": rows}
