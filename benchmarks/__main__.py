"""`python -m benchmarks` (or benchmarks/run.sh): the gateway against nginx, in one run.

Layout on a machine with two or more cores: the process under test (a gateway, or nginx as the
baseline proxy) is pinned alone to --sut-cpu; the load generator (wrk, h2load) and the
fixed-answer backend (nginx) share --load-cpu. Each target is warmed up, then measured in
interleaved repetitions (target A, B, C, A, B, C, ...) and the median of each figure is
reported, so a slow minute on a shared machine hurts every target alike. CPU us per request is
read from /proc/<pid>/stat of the process under test.

Prints one table (markdown) with requests/s, p50/p99, CPU us per request and every ratio the
performance goals name. Nothing here asserts: the printed ratios are the verdict.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import scenarios
from benchmarks.report import print_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions per target")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per target")
    p.add_argument("--sut-cpu", default="0", help="core for the process under test")
    p.add_argument("--load-cpu", default="1", help="core(s) for load generator and backend")
    p.add_argument("--engines", default="compat,native", help="gateway engines to measure")
    p.add_argument("--only", default="rest,grpc,latency,limits,routing,workers,replica,tracing",
                   help="comma-separated parts to run")
    p.add_argument("--rest-conns", type=int, default=64)
    p.add_argument("--grpc-clients", type=int, default=8)
    p.add_argument("--grpc-streams", type=int, default=8)
    p.add_argument("--against", metavar="REF[,REF...]",
                   help="also measure the native gateway of each commit REF (e.g. main, HEAD~3) "
                        "beside this tree's, in the same interleaved runs")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    args = p.parse_args(argv)

    missing = [t for t in ("wrk", "h2load", "taskset") if shutil.which(t) is None]
    if not Path("/usr/sbin/nginx").exists():
        missing.append("/usr/sbin/nginx")
    if missing:
        print(f"benchmarks: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="infergate-bench-"))
    workdir.chmod(0o755)  # nginx workers run as an unprivileged user and read the answer file
    started = time.time()
    bench = scenarios.Bench(workdir, args)
    try:
        bench.setup()
        results = bench.run(set(args.only.split(",")))
    finally:
        bench.teardown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)
    print_report(results, args, time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
