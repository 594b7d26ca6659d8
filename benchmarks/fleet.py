"""`python -m benchmarks.fleet`: the performance of the fleet, not just of the hop. Four replicas
behind each balancer, five scenarios, every balancer side by side in one run.

Balancers: infergate (`round_robin`, `least_request`, `least_loaded`, `least_loaded` with
hedging), nginx (round robin, `least_conn`) and HAProxy (`leastconn`), see
`benchmarks.fleet_balancers`. Replicas: `benchmarks.fleet_replica`, light fixed-answer servers
acting out `benchmarks.fleet_scenarios` (equal; one 4x slower; one stalling 1 s every 10 s;
load-dependent latency and GPU utilisation; one turning slow halfway). They are light on
purpose: on a 2-core machine a TensorFlow replica would compete for the CPU with the load
generator and the balancer, and the balancers must be the variable, not TensorFlow.

Layout: every balancer on --balancer-cpu (only the one under test has traffic); the replicas and
this process (the open-loop load generator, `benchmarks.openloop`) on --load-cpu. For each
scenario, every balancer starts afresh (infergate's latency memory must not carry one scenario's
stall into the next), repetitions are interleaved (A, B, C, ..., A, B, C, ...) and every
balancer gets the same seeded Poisson arrivals at --rate calls/s for --warmup + --duration
seconds; only calls due in the measured part count. A run takes about 7 s, so the defaults
(5 scenarios x 7 balancers x 2 repetitions) finish in about 9 minutes; --quick in about 3.5.

Prints one markdown report (`benchmarks.fleet_report`): nothing here asserts, the verdicts
printed are the result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

from benchmarks import fleet_balancers, openloop, procs
from benchmarks.fleet_report import Cell, Run, markdown, summarize
from benchmarks.fleet_scenarios import SCENARIO_KEYS, build
from benchmarks.protos import REST_PREDICT_ANSWER, REST_PREDICT_BODY

PATH = f"/v1/models/{fleet_balancers.MODEL}:predict"
REPLICAS = 4


def _control(port: int, method: str, path: str, payload: dict[str, object] | None = None
             ) -> dict[str, object]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        out: dict[str, object] = json.loads(resp.read())
    return out


def _check(port: int) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", data=REST_PREDICT_BODY,
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
    if body != REST_PREDICT_ANSWER:
        raise RuntimeError(f"port {port} answered {body[:200]!r}, not the fixed prediction")


def _wait_idle(control: int, limit_s: float = 5.0) -> None:
    """Until no replica has calls in flight (calls abandoned by a run drain), at most limit_s."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        stats = _control(control, "GET", "/stats")
        in_flight = stats["in_flight"]
        assert isinstance(in_flight, list)
        if not any(in_flight):
            return
        time.sleep(0.1)


def _ejections(p: procs.Procs, balancer: fleet_balancers.Balancer) -> int | None:
    """Outlier ejections an infergate balancer has logged so far (None for the others)."""
    if balancer.family != "infergate":
        return None
    log = p.workdir / f"{balancer.process}.log"
    return log.read_text(errors="replace").count("ejecting replica") if log.exists() else 0


def measure(p: procs.Procs, balancer: fleet_balancers.Balancer, control: int, key: str,
            rep: int, args: argparse.Namespace) -> Run:
    import uvloop

    ejected_before = _ejections(p, balancer)
    t0 = time.monotonic() + args.warmup + 0.1
    _control(control, "POST", "/scenario", {"key": key, "t0": t0, "duration": args.duration})
    seed = zlib.crc32(f"{args.seed}:{key}:{rep}".encode())  # the same arrivals for every balancer
    schedule = openloop.poisson_schedule(args.rate, -args.warmup, args.duration, seed)
    outcomes = uvloop.run(openloop.run(balancer.port, PATH, REST_PREDICT_BODY, schedule, t0,
                                       timeout_s=args.timeout, max_conns=args.max_conns))
    stats = _control(control, "GET", "/stats")
    arrivals = stats["arrivals"]
    assert isinstance(arrivals, list)
    _wait_idle(control)
    ejected = _ejections(p, balancer)
    ejections = None if ejected is None or ejected_before is None else ejected - ejected_before
    return Run([o for o in outcomes if o.due_s >= 0.0], arrivals, args.duration, ejections)


def _dump(path: Path, run: Run) -> None:
    path.write_text(json.dumps({"outcomes": [[o.due_s, o.latency_s, o.status] for o in run.outcomes],
                                "arrivals": run.arrivals, "ejections": run.ejections}))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet",
                                description=(__doc__ or "").splitlines()[0])
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions per balancer")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between starting a scenario's balancers and its first run")
    p.add_argument("--rate", type=float, default=1200.0, help="offered load, calls per second")
    p.add_argument("--slo-ms", type=float, default=100.0, help="goodput counts answers this fast")
    p.add_argument("--timeout", type=float, default=2.0, help="a call gives up after this")
    p.add_argument("--max-conns", type=int, default=1024, help="client connections at most")
    p.add_argument("--scenarios", default=",".join(SCENARIO_KEYS))
    p.add_argument("--balancers", default=",".join(fleet_balancers.ALL_NAMES),
                   help="comma-separated names, e.g. 'nginx least_conn,infergate least_loaded'")
    p.add_argument("--policies", default="",
                   help="also measure infergate with these registered balancers (comma-separated)")
    p.add_argument("--balancer-cpu", default="0")
    p.add_argument("--load-cpu", default="1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="4 s runs, one repetition (~3 minutes)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (logs, configs, raw outcomes)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.reps, args.warmup = 4.0, 1, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    keys = [k for k in args.scenarios.split(",") if k]
    extra = [x for x in args.policies.split(",") if x]
    infergate = fleet_balancers.infergate_policies(extra)
    names = [n for n in args.balancers.split(",") if n] + [f"infergate {x}" for x in extra]
    unknown = [n for n in names if n not in fleet_balancers.ALL_NAMES and n not in infergate]
    missing = [t for t in ("taskset",) if shutil.which(t) is None]
    missing += [f for f in ("/usr/sbin/nginx", fleet_balancers.HAPROXY) if not Path(f).exists()]
    if unknown or missing:
        print(f"benchmarks.fleet: unknown balancers {unknown}, missing tools {missing} "
              "(./benchmarks/run.sh installs nginx-light and haproxy when run as root)",
              file=sys.stderr)
        return 2
    started = time.time()
    os.sched_setaffinity(0, {int(c) for c in args.load_cpu.split(",")})
    workdir = Path(tempfile.mkdtemp(prefix="infergate-fleet-"))
    workdir.chmod(0o755)
    p = procs.Procs(workdir)
    results: dict[str, dict[str, Cell]] = {}
    loads = [f"start {os.getloadavg()[0]:.1f}"]  # other work on a shared machine shows here
    try:
        ports = [procs.free_port() for _ in range(REPLICAS)]
        control = procs.free_port()
        p.start("replicas", [sys.executable, "-m", "benchmarks.fleet_replica", "--ports",
                             ",".join(map(str, ports)), "--control", str(control)], args.load_cpu)
        for port in [*ports, control]:
            procs.wait_port(port)
        for key in keys:
            # Fresh balancers for every scenario: infergate remembers latencies (peak EWMA) and
            # nginx and HAProxy do not, so a stall must not follow it into the next scenario.
            balancers = fleet_balancers.start_all(p, workdir, ports, args.balancer_cpu, names,
                                                  infergate)
            for b in balancers:
                _check(b.port)
            time.sleep(args.settle)  # start-up work (first probes and scrapes) is done by then
            runs: dict[str, list[Run]] = {b.name: [] for b in balancers}
            for rep in range(args.reps):
                for b in balancers:
                    run = measure(p, b, control, key, rep, args)
                    runs[b.name].append(run)
                    if args.keep:  # the raw figures, for a closer look
                        _dump(workdir / f"{key}-{rep}-{b.name.replace(' ', '-')}.json", run)
                    print(f"  {key} rep {rep + 1}: {b.name} done", file=sys.stderr, flush=True)
            for process in dict.fromkeys(b.process for b in balancers):
                p.stop(process)
            results[key] = {n: summarize(rs, args.slo_ms / 1000.0) for n, rs in runs.items()}
            loads.append(f"{key} {os.getloadavg()[0]:.1f}")
    finally:
        p.stop_all()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    scenarios = {k: build(k, args.duration) for k in keys}
    titles = {k: s.title for k, s in scenarios.items()}
    numbers = {k: s.number for k, s in scenarios.items()}
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print("\n".join([
        f"## infergate fleet benchmark, {now}", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}. Balancers on core {args.balancer_cpu}; replicas and "
        f"load generator on {args.load_cpu}. {REPLICAS} replicas ({scenarios[keys[0]].slots} slots, "
        f"{scenarios[keys[0]].base_s * 1000:g} ms a call when healthy and idle). Open loop, "
        f"Poisson arrivals at {args.rate:g} calls/s; {args.reps} interleaved repetition(s) of "
        f"{args.duration:g} s after {args.warmup:g} s warm-up; goodput = answers within "
        f"{args.slo_ms:g} ms per second; a call gives up after {args.timeout:g} s. "
        f"Whole run {time.time() - started:.0f} s. 1-minute load average (this run's own "
        f"processes add about 1): {', '.join(loads)}.", "",
        *markdown(results, titles, numbers)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
