"""The one table the benchmark prints, and the ratios the performance goals are judged by.

What must always hold: every goal line shows the measured figure next to its goal, and a
figure that could not be measured says why instead of passing silently.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

from benchmarks.load import RunResult
from benchmarks.scenarios import BUSY_NAME, Results


def _f(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _rows(title: str, runs: dict[str, RunResult]) -> list[str]:
    out = [f"| {title} | req/s | p50 us | p99 us | CPU us/req | errors |",
           "|---|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        out.append(f"| {name} | {_f(r.rps)} | {_f(r.p50_us)} | {_f(r.p99_us)} | "
                   f"{_f(r.cpu_us_per_req, 1)} | {r.errors} |")
    return out


def _goal(name: str, value: float | None, goal: str, ok: bool | None, unit: str = "") -> str:
    verdict = "n/a" if ok is None else ("met" if ok else "MISSED")
    shown = "not measured" if value is None else f"{value:,.2f}{unit}"
    return f"| {name} | {shown} | {goal} | {verdict} |"


def goals(res: Results) -> list[str]:
    out = ["| goal | measured | target | verdict |", "|---|---:|---:|---|"]
    for proto, runs, base, factor in (("gRPC", res.grpc, "nginx grpc_pass", 1.0),
                                      ("REST", res.rest, "nginx proxy_pass", 0.35)):
        gw = runs.get("gateway native")
        ref = runs.get(base)
        ratio = gw.rps / ref.rps if gw and ref and ref.rps else None
        out.append(_goal(f"{proto} gateway/{base} req/s", ratio, f">= {factor:.2f}x",
                         None if ratio is None else ratio >= factor, "x"))
        cpu = gw.cpu_us_per_req if gw else None
        out.append(_goal(f"{proto} gateway CPU per request", cpu, "<= 50 us",
                         None if cpu is None else cpu <= 50, " us"))
    out.append(_goal("routing work per request", res.routing_us, "<= 20 us",
                     None if res.routing_us is None else res.routing_us <= 20, " us"))
    un = res.routing_us_no_session
    out.append(_goal("routing work per request, no session key (least_loaded ranks)", un,
                     "<= 20 us", None if un is None else un <= 20, " us"))
    for proto, runs in (("REST", res.latency_rest), ("gRPC", res.latency_grpc)):
        for name, what in (("gateway native", ""), (BUSY_NAME, ", busy polling")):
            gw, direct = runs.get(name), runs.get("direct (backend)")
            added = (gw.p50_us - direct.p50_us if gw and direct and gw.p50_us is not None
                     and direct.p50_us is not None else None)
            out.append(_goal(f"{proto} added p50 latency at concurrency 1{what}", added,
                             "<= 100 us", None if added is None else added <= 100, " us"))
    w = res.workers
    out.append(_goal("--workers 2 / --workers 1 req/s", w.get("scaling"), ">= 1.70x",
                     None if w.get("scaling") is None else w["scaling"] >= 1.7, "x"))
    rss = res.rss_idle_mib.get("native")
    out.append(_goal("gateway RSS idle", rss, "<= 100 MB", None if rss is None else rss <= 100,
                     " MiB"))
    ready = res.ready_s.get("native")
    out.append(_goal("start to ready", ready, "<= 1 s", None if ready is None else ready <= 1.0,
                     " s"))
    out += _against_goals(res) + _tracing_goals(res)
    for proto in ("rest", "grpc"):
        c = res.conn1000.get(proto)
        ok = None if c is None else (c.errors == 0 and c.requests > 0)
        out.append(_goal(f"1,000 {proto.upper()} client connections held (req/s, 0 errors)",
                         c.rps if c else None, "all served", ok))
    return out


def _against_goals(res: Results) -> list[str]:
    """This tree's native gateway against --against's, in the same runs."""
    out = []
    for against in res.against:
        for proto, runs in (("REST", res.rest), ("gRPC", res.grpc)):
            now, then = runs.get("gateway native"), runs.get(against)
            ratio = now.rps / then.rps if now and then and then.rps else None
            out.append(_goal(f"{proto} req/s, this tree / {against.removeprefix('gateway ')}",
                             ratio, ">= 0.95x (noise)", None if ratio is None else ratio >= 0.95,
                             "x"))
    return out


def _tracing_goals(res: Results) -> list[str]:
    """What tracing costs: req/s against the same gateway without it (a figure, not a goal)."""
    t = res.tracing
    if t.get("skipped"):
        return [_goal(f"tracing cost (skipped: {t['skipped']})", None, "reported", None)]
    out = []
    for proto, ratios in t.get("ratio", {}).items():
        for name, ratio in ratios.items():
            ok = None if t.get("spans") else False  # traced gateways that sent no span: failed
            out.append(_goal(f"{proto} req/s, {name.removeprefix('gateway native, ')} / off",
                             ratio, "reported", ok, "x"))
    return out


def print_report(res: Results, args: argparse.Namespace, seconds: float) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## infergate benchmark, {now}", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
             f"Python {platform.python_version()} ({sys.executable}). Process under test on "
             f"core {args.sut_cpu}; "
             f"load generator and backend on {args.load_cpu}. Medians of {args.reps} interleaved "
             f"{args.duration:g} s runs after {args.warmup:g} s warm-up; whole run {seconds:.0f} s.",
             "", f"REST: wrk, {args.rest_conns} connections. gRPC: h2load, {args.grpc_clients} "
             f"connections x {args.grpc_streams} streams. Routing on (split + sticky + "
             "least_loaded + metrics), cache off.", ""]
    if res.rest:
        lines += _rows("REST predict", res.rest) + [""]
    if res.grpc:
        lines += _rows("gRPC Predict", res.grpc) + [""]
    if res.latency_rest:
        lines += _rows("REST, concurrency 1", res.latency_rest) + [""]
    if res.latency_grpc:
        lines += _rows("gRPC, concurrency 1", res.latency_grpc) + [""]
    if res.conn1000:
        lines += _rows("1,000 connections (native)", res.conn1000) + [""]
    if res.tracing.get("rest"):
        lines += _rows("REST, tracing (OTLP/HTTP)", res.tracing["rest"]) + [""]
        lines += _rows("gRPC, tracing (OTLP/HTTP)", res.tracing["grpc"]) + [""]
        lines += [f"Spans received by the OTLP receiver: {res.tracing['spans']:,}.", ""]
    if res.workers.get("runs"):
        lines += _rows(f"workers ({res.workers.get('layout', '')})", res.workers["runs"]) + [""]
    elif res.workers.get("skipped"):
        lines += [f"Workers: skipped: {res.workers['skipped']}", ""]
    if res.replica.get("runs"):
        lines += _rows("end to end, real TF replica", res.replica["runs"]) + [""]
    elif res.replica.get("skipped"):
        lines += [f"End to end through a real TF replica: skipped: {res.replica['skipped']}", ""]
    mem = ", ".join(f"{k} {v:.0f} MiB" for k, v in res.rss_idle_mib.items())
    ready = ", ".join(f"{k} {v:.2f} s" for k, v in res.ready_s.items())
    lines += [f"Idle RSS: {mem}. Start to ready: {ready}.", ""]
    lines += goals(res)
    for n in res.notes:
        lines.append(f"\nNote: {n}")
    print("\n".join(lines))
