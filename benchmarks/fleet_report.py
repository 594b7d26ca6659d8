"""What the fleet benchmark prints: per scenario and balancer, goodput at the offered load,
p50/p99/p99.9, errors, each replica's share of the calls in 2 s windows, ratios against the best
of nginx and HAProxy in the same run, and the verdict on each target.

What must always hold: figures are computed from what was measured, pooled over the interleaved
repetitions (percentiles over every call, a failed call counting at the time it gave up);
swings are judged per repetition (summing would smooth an oscillation away); every target
shows its measured figure, and one that could not be computed says so instead of passing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.openloop import Outcome

WINDOW_S = 2.0
SHARE_FLOOR = 0.01  # shares below 1 % count as 1 % in a swing ratio (no division by zero)
BASELINE_FAMILIES = ("nginx", "haproxy")


@dataclass(slots=True)
class Run:
    """One measured run of one balancer in one scenario."""

    outcomes: list[Outcome]
    arrivals: list[list[float]]  # per replica: predict arrival times, seconds from t0
    duration_s: float
    ejections: int | None = None  # replicas the balancer ejected during the run (infergate logs)


@dataclass(slots=True)
class Cell:
    """One balancer in one scenario, over its repetitions."""

    calls: int = 0
    errors: int = 0
    goodput: float = 0.0  # answers with status 200 within the SLO, per second
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    shares: list[list[float]] = field(default_factory=list)  # [replica][window], all reps
    swing: float | None = None  # worst consecutive-window share ratio of any replica, any rep
    ejections: int | None = None  # outlier ejections over the repetitions; None: not known


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of values sorted ascending; None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered) / 100.0 - 1e-9))  # 99.9 % of 1000 is 999, not 1000
    return ordered[min(rank, len(ordered)) - 1]


def window_counts(arrivals: Sequence[Sequence[float]], duration_s: float,
                  window_s: float = WINDOW_S) -> list[list[int]]:
    """Calls each replica received in each whole window [k*w, (k+1)*w) of [0, duration_s)."""
    n = int(duration_s / window_s + 1e-9)
    out = [[0] * n for _ in arrivals]
    for r, times in enumerate(arrivals):
        for t in times:
            if t >= 0:
                k = int(t / window_s)
                if k < n:
                    out[r][k] += 1
    return out


def shares(counts: Sequence[Sequence[int]]) -> list[list[float]]:
    """Each replica's share of the calls of each window ([replica][window]); 0 for an empty one."""
    if not counts:
        return []
    windows = len(counts[0])
    totals = [sum(c[k] for c in counts) for k in range(windows)]
    return [[c[k] / totals[k] if totals[k] else 0.0 for k in range(windows)] for c in counts]


def max_swing(share: Sequence[Sequence[float]], floor: float = SHARE_FLOOR) -> float | None:
    """The largest ratio between one replica's shares in consecutive windows (>= 1); None with
    fewer than two windows."""
    worst: float | None = None
    for row in share:
        for a, b in zip(row, row[1:], strict=False):
            hi, lo = max(a, b, floor), max(min(a, b), floor)
            ratio = hi / lo
            worst = ratio if worst is None or ratio > worst else worst
    return worst


def summarize(runs: Sequence[Run], slo_s: float) -> Cell:
    cell = Cell()
    latencies = sorted(o.latency_s for r in runs for o in r.outcomes)
    cell.calls = len(latencies)
    cell.errors = sum(1 for r in runs for o in r.outcomes if o.status != 200)
    good = sum(1 for r in runs for o in r.outcomes if o.status == 200 and o.latency_s <= slo_s)
    seconds = sum(r.duration_s for r in runs)
    cell.goodput = good / seconds if seconds else 0.0
    for q, attr in ((50, "p50_ms"), (99, "p99_ms"), (99.9, "p999_ms")):
        v = percentile(latencies, q)
        setattr(cell, attr, None if v is None else v * 1000.0)
    if runs:
        total = [list(map(sum, zip(*rows, strict=True)))
                 for rows in zip(*(window_counts(r.arrivals, r.duration_s) for r in runs),
                                 strict=True)]
        cell.shares = shares(total)
        swings = [max_swing(shares(window_counts(r.arrivals, r.duration_s))) for r in runs]
        known = [s for s in swings if s is not None]
        cell.swing = max(known) if known else None
        ejected = [r.ejections for r in runs if r.ejections is not None]
        cell.ejections = sum(ejected) if ejected else None
    return cell


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    measured: str
    goal: str
    ok: bool | None  # None: could not be judged


def _family(name: str) -> str:
    return name.split(" ", 1)[0]


def best_baseline(cells: dict[str, Cell]) -> tuple[str, Cell] | None:
    """The nginx or HAProxy row with the lowest p99."""
    rows = [(n, c) for n, c in cells.items()
            if _family(n) in BASELINE_FAMILIES and c.p99_ms is not None]
    return min(rows, key=lambda nc: nc[1].p99_ms or 0.0) if rows else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def verdicts(results: dict[str, dict[str, Cell]], numbers: dict[str, int]) -> list[Verdict]:
    """The issue's targets, judged on one run's cells ([scenario key][balancer name])."""
    out: list[Verdict] = []
    for key in ("slow", "stall", "turns-slow"):
        cells = results.get(key)
        if not cells:
            continue
        base = best_baseline(cells)
        ours = [(n, c) for n, c in cells.items() if _family(n) == "infergate" and c.p99_ms]
        label = f"{numbers[key]} {key}: best infergate p99 vs best nginx/HAProxy, errors"
        if base is None or not ours:
            out.append(Verdict(label, "not measured", "<= 0.50x, no more errors", None))
            continue
        name, best = min(ours, key=lambda nc: nc[1].p99_ms or 0.0)
        r = _ratio(best.p99_ms, base[1].p99_ms)
        ok = r is not None and r <= 0.5 and best.errors <= base[1].errors
        out.append(Verdict(label, f"{r:.2f}x ({name} vs {base[0]}), errors {best.errors} vs "
                                  f"{base[1].errors}", "<= 0.50x, no more errors", ok))
        if key == "stall":  # not a target: where a stall shows under least-connections
            tail = [(n, c) for n, c in ours if c.p999_ms]
            ref = min((c.p999_ms for n, c in cells.items() if _family(n) in BASELINE_FAMILIES
                       and c.p999_ms), default=None)
            if tail and ref:
                tn, tc = min(tail, key=lambda nc: nc[1].p999_ms or 0.0)
                out.append(Verdict(f"{numbers[key]} stall, for information: best infergate "
                                   "p99.9 vs best nginx/HAProxy",
                                   f"{(tc.p999_ms or 0.0) / ref:.2f}x ({tn})", "-", None))
    cells = results.get("equal")
    if cells:
        ngx = [c.p99_ms for n, c in cells.items() if _family(n) == "nginx" and c.p99_ms]
        ref = min(ngx) if ngx else None
        for n, c in cells.items():
            if _family(n) != "infergate":
                continue
            r = _ratio(c.p99_ms, ref)
            out.append(Verdict(f"{numbers['equal']} equal: {n} p99 vs best nginx",
                               "not measured" if r is None else f"{r:.2f}x", "<= 1.05x",
                               None if r is None else r <= 1.05))
    cells = results.get("load")
    if cells:
        for n, c in cells.items():
            if _family(n) != "infergate":
                continue
            s = c.swing
            out.append(Verdict(f"{numbers['load']} load: {n} largest share swing between 2 s "
                               "windows", "not measured" if s is None else f"{s:.2f}x",
                               "<= 2.00x", None if s is None else s <= 2.0))
        ll, lr = cells.get("infergate least_loaded"), cells.get("infergate least_request")
        r = _ratio(ll.p99_ms if ll else None, lr.p99_ms if lr else None)
        out.append(Verdict(f"{numbers['load']} load: least_loaded p99 vs least_request",
                           "not measured" if r is None else f"{r:.2f}x", "<= 1.00x",
                           None if r is None else r <= 1.0))
    return out


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def markdown(results: dict[str, dict[str, Cell]], titles: dict[str, str],
             numbers: dict[str, int]) -> list[str]:
    lines = ["| scenario | balancer | goodput/s | p50 ms | p99 ms | p99.9 ms | errors | "
             "p99 / best nginx,HAProxy | max share swing | ejections |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, cells in results.items():
        base = best_baseline(cells)
        for n, c in cells.items():
            r = _ratio(c.p99_ms, base[1].p99_ms if base else None)
            lines.append(f"| {numbers[key]} {titles[key]} | {n} | {c.goodput:,.0f} | "
                         f"{_f(c.p50_ms)} | {_f(c.p99_ms)} | {_f(c.p999_ms)} | {c.errors} | "
                         f"{_f(r, 2)}x | {_f(c.swing, 2)}x | "
                         f"{'-' if c.ejections is None else c.ejections} |")
    count = max((len(c.shares) for cells in results.values() for c in cells.values()), default=0)
    lines += ["", "Share of each replica's calls per 2 s window, in percent (all repetitions):",
              "", "| scenario | balancer | " + " | ".join(f"r{i}" for i in range(count)) + " |",
              "|---|---|" + "---|" * count]
    for key, cells in results.items():
        for n, c in cells.items():
            row = [" / ".join(f"{100 * s:.0f}" for s in rs) for rs in c.shares]
            lines.append(f"| {numbers[key]} | {n} | " + " | ".join(row) + " |")
    lines += ["", "| target | measured | goal | verdict |", "|---|---|---:|---|"]
    for v in verdicts(results, numbers):
        verdict = ("-" if v.goal == "-" else "n/a") if v.ok is None else (
            "met" if v.ok else "MISSED")
        lines.append(f"| {v.target} | {v.measured} | {v.goal} | {verdict} |")
    return lines
