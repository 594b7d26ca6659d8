"""`--workers N` scaling: the native gateway with one worker on one core against two workers on
two cores, the load generator and backend on the remaining cores.

What must always hold: the two layouts differ only in worker count and cores; on a machine
with fewer than four cores the figure is not measured (the load generator would share a core
with the gateway, and the ratio would measure that contention, not the gateway).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from benchmarks import load, procs

if TYPE_CHECKING:
    from benchmarks.scenarios import Bench


def run_workers(bench: Bench) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    if cores < 4:
        return {"skipped": f"needs at least 4 cores (this machine has {cores}); "
                           "--workers itself is covered by the tests"}
    load_cpus = f"2-{cores - 1}"
    b_rest, b_grpc = bench.backend
    path = "/v1/models/half_plus_two:predict"
    runs: dict[str, load.RunResult] = {}
    for workers, cpus in ((1, "0"), (2, "0,1")):
        name = f"gw-workers-{workers}"
        cfg, ports = procs.gateway_config(bench.workdir, name, b_rest, b_grpc, "native")
        proc, _ = procs.start_gateway(bench.procs, name, cfg, cpus, ports["admin"], workers)
        url = f"http://127.0.0.1:{ports['rest']}{path}"
        load.wrk(url, bench.args.rest_conns, bench.args.warmup, bench.lua, load_cpus)
        rs = [load.wrk(url, bench.args.rest_conns * workers, bench.args.duration, bench.lua,
                       load_cpus, load.family(proc.pid), threads=2)
              for _ in range(bench.args.reps)]
        runs[f"REST, {workers} worker(s) on core(s) {cpus}"] = load.median_result(rs)
        bench.procs.stop(name)
    one, two = runs.values()
    return {"runs": runs, "layout": f"load on cores {load_cpus}",
            "scaling": two.rps / one.rps if one.rps else None}
