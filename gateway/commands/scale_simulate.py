"""`infergate scale simulate --trace FILE`: replay a load trace through the scale controller.

Owns trace loading (CSV or JSON lines), the replay loop and its two outputs: a text table of every
decision and a PNG timeline (load, signals relative to their up thresholds, replicas).

Trace columns: t_s, rps, p95_latency_ms (required); gpu_util, cpu_util (fractions 0..1),
queue_depth, capacity_rps (optional). A column that is absent is a signal whose source is not
configured (left out of decisions); an empty cell or JSON null is a configured source that did not
answer (unknown, which never drives a scale-down). `--capacity-rps N` gives each replica a capacity
so that rps_ratio = rps / (N x current replicas) responds to the simulated replica count; every
other signal is replayed as recorded.

Replay model: the trace's t_s is the controller's clock; a decision's replica count becomes the
pool's current count `--provision-delay-s` later (0: by the next row). Always true: the same trace
and flags give the same table and the same PNG bytes.

Cost: when --config prices the pool (`pools.NAME.cost_per_hour`, per replica), the trace's cost
under these decisions is the replicas in service between each row and the next x that time x the
price, set beside a fixed fleet of the peak size over the whole trace (docs/cost-ladder.md).
`--json` prints the decisions, the summary and the cost as one JSON document.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from gateway.scaling import (
    METRICS,
    PoolScalePolicy,
    ScaleController,
    ScaleDecision,
    Signals,
    policy_from_mapping,
)
from gateway.scaling.chart import GREY, Panel, Series, timeline_png

REQUIRED = ("t_s", "rps", "p95_latency_ms")
OPTIONAL = ("gpu_util", "cpu_util", "queue_depth", "capacity_rps")


@dataclass(frozen=True, slots=True)
class TracePoint:
    t_s: float
    rps: float | None
    p95_latency_ms: float | None
    gpu_util: float | None = None
    cpu_util: float | None = None
    queue_depth: float | None = None
    capacity_rps: float | None = None


@dataclass(frozen=True, slots=True)
class Trace:
    points: tuple[TracePoint, ...]
    columns: frozenset[str]  # which optional columns the trace has


@dataclass(frozen=True, slots=True)
class SimStep:
    point: TracePoint
    signals: Signals
    decision: ScaleDecision


@dataclass(frozen=True, slots=True)
class TraceCost:
    cost_per_hour: float  # per replica
    duration_s: float
    replica_hours: float  # replicas in service x time, under the controller's decisions
    peak_replicas: int  # the most replicas in service at once
    scaled: float  # replica_hours x price
    fixed: float  # peak_replicas x duration x price

    def to_json(self) -> dict[str, Any]:
        return {"cost_per_hour": self.cost_per_hour, "duration_s": self.duration_s,
                "replica_hours": round(self.replica_hours, 6), "peak_replicas": self.peak_replicas,
                "scaled": round(self.scaled, 6), "fixed_peak": round(self.fixed, 6),
                "saving": round(self.fixed - self.scaled, 6)}

    def line(self) -> str:
        less = f": {100 * (1 - self.scaled / self.fixed):.0f}% less" if self.fixed > 0 else ""
        return (f"cost {self.scaled:.4g} for {self.replica_hours:.4g} replica-hours under these "
                f"decisions; {self.fixed:.4g} for a fixed fleet of {self.peak_replicas} (the peak) "
                f"over {self.duration_s:g} s, at {self.cost_per_hour:g} per replica-hour{less}")


def trace_cost(steps: Sequence[SimStep], cost_per_hour: float) -> TraceCost:
    """Replicas x time x price: between two rows the pool has the replicas in service at the
    later one (what the earlier decision, once provisioned, left it with)."""
    replica_s = 0.0
    counts = [after.decision.current_replicas for after in steps[1:]]
    for (before, after), n in zip(pairwise(steps), counts, strict=True):
        replica_s += n * (after.point.t_s - before.point.t_s)
    peak = max(counts) if counts else (steps[0].decision.current_replicas if steps else 0)
    duration = steps[-1].point.t_s - steps[0].point.t_s if steps else 0.0
    hours = replica_s / 3600.0
    return TraceCost(cost_per_hour, duration, hours, peak, hours * cost_per_hour,
                     peak * duration / 3600.0 * cost_per_hour)


def _cell(raw: object, where: str) -> float | None:
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    if isinstance(raw, bool):
        raise ValueError(f"{where}: expected a number, got {raw!r}")
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {raw!r}") from None


def _rows(path: Path) -> tuple[list[tuple[int, Mapping[str, Any]]], set[str]]:
    text = path.read_text(encoding="utf-8")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    rows: list[tuple[int, Mapping[str, Any]]] = []
    if first.startswith("{"):
        keys: set[str] = set()
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object per line")
            keys |= set(obj)
            rows.append((n, obj))
        return rows, keys
    reader = csv.DictReader(text.splitlines())
    header = {h.strip() for h in (reader.fieldnames or [])}
    for n, row in enumerate(reader, start=2):
        rows.append((n, {k.strip(): v for k, v in row.items() if k is not None}))
    return rows, header


def load_trace(path: Path) -> Trace:
    """Read a CSV or JSON-lines trace; ValueError names the file, line and column at fault."""
    rows, keys = _rows(path)
    missing = [c for c in REQUIRED if c not in keys]
    if missing:
        raise ValueError(f"{path}: missing column {missing[0]} (required: {', '.join(REQUIRED)})")
    unknown = sorted(keys - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"{path}: unknown column {unknown[0]} (optional: {', '.join(OPTIONAL)})")
    points: list[TracePoint] = []
    for n, row in rows:
        values = {k: _cell(row.get(k), f"{path}:{n}: {k}") for k in (*REQUIRED, *OPTIONAL)}
        t = values.pop("t_s")
        if t is None:
            raise ValueError(f"{path}:{n}: t_s: missing")
        if points and t < points[-1].t_s:
            raise ValueError(f"{path}:{n}: t_s {t:g} goes back in time (previous {points[-1].t_s:g})")
        for k, v in values.items():
            if v is not None and v < 0:
                raise ValueError(f"{path}:{n}: {k}: must not be negative, got {v:g}")
        points.append(TracePoint(t, **values))
    if not points:
        raise ValueError(f"{path}: no rows")
    return Trace(tuple(points), frozenset(keys & set(OPTIONAL)))


def simulate(
    trace: Trace,
    policy: PoolScalePolicy,
    *,
    initial_replicas: int | None = None,
    capacity_rps_per_replica: float | None = None,
    provision_delay_s: float = 0.0,
) -> list[SimStep]:
    """Replay `trace` through a fresh ScaleController (see the module docstring for the model)."""
    configured = {"p95_latency_ms"} | {m for m in METRICS if m in trace.columns}
    if "capacity_rps" in trace.columns or capacity_rps_per_replica is not None:
        configured.add("rps_ratio")
    controller = ScaleController(policy)
    current = max(1, policy.min_replicas) if initial_replicas is None else initial_replicas
    pending: list[tuple[float, int]] = []  # (becomes current at, replicas)
    steps: list[SimStep] = []
    for p in trace.points:
        while pending and pending[0][0] <= p.t_s:
            current = pending.pop(0)[1]
        capacity = p.capacity_rps
        if capacity is None and capacity_rps_per_replica is not None:
            capacity = capacity_rps_per_replica * current
        signals = Signals(
            p95_latency_ms=p.p95_latency_ms, queue_depth=p.queue_depth, gpu_util=p.gpu_util,
            cpu_util=p.cpu_util, rps=p.rps, capacity_rps=capacity, configured=frozenset(configured),
        )
        decision = controller.evaluate(signals, current, p.t_s)
        steps.append(SimStep(p, signals, decision))
        last_target = pending[-1][1] if pending else current
        if decision.desired_replicas != last_target:
            if provision_delay_s <= 0:
                current = decision.desired_replicas
            else:
                pending.append((p.t_s + provision_delay_s, decision.desired_replicas))
    return steps


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def format_table(steps: Sequence[SimStep]) -> str:
    """One line per decision: time, signals, replicas, direction and reason."""
    head = (
        f"{'t_s':>7} {'rps':>7} {'p95_ms':>7} {'gpu':>5} {'cpu':>5} {'queue':>6} {'cur':>4} {'want':>4}"
        "  dir   reason"
    )
    lines = [head, "-" * len(head)]
    for s in steps:
        p, d = s.point, s.decision
        lines.append(
            f"{p.t_s:>7g} {_fmt(p.rps, 4):>7} {_fmt(p.p95_latency_ms, 4):>7} {_fmt(p.gpu_util, 2):>5} "
            f"{_fmt(p.cpu_util, 2):>5} {_fmt(p.queue_depth, 4):>6} {d.current_replicas:>4} "
            f"{d.desired_replicas:>4}  {d.direction:<5} {d.reason}"
        )
    return "\n".join(lines)


_COLORS = {"p95_latency_ms": (214, 39, 40), "queue_depth": (148, 103, 189), "gpu_util": (44, 160, 44),
           "cpu_util": (255, 127, 14), "rps_ratio": (31, 119, 180)}
_SHORT = {"p95_latency_ms": "P95", "queue_depth": "QUEUE", "gpu_util": "GPU", "cpu_util": "CPU",
          "rps_ratio": "RPS/CAP"}


def render_png(steps: Sequence[SimStep], policy: PoolScalePolicy) -> bytes:
    """The timeline: load, each configured signal divided by its up threshold, replicas."""
    xs = [s.point.t_s for s in steps]
    load = [Series("RPS", (31, 119, 180), [s.point.rps for s in steps])]
    caps = [s.signals.capacity_rps for s in steps]
    if any(c is not None for c in caps):
        load.append(Series("CAPACITY", GREY, caps, step=True))
    configured = steps[0].signals.configured if steps else frozenset()
    ratios: list[Series] = []
    for metric in METRICS:
        if metric not in configured:
            continue
        target = policy.up.get(metric)
        values = [s.signals.metric_values()[metric] for s in steps]
        scaled = [None if v is None else v / target for v in values]
        ratios.append(Series(_SHORT[metric], _COLORS[metric], scaled))
    replicas = [
        Series("CURRENT", GREY, [float(s.decision.current_replicas) for s in steps], step=True, width=4),
        Series("DESIRED", (0, 0, 0), [float(s.decision.desired_replicas) for s in steps], step=True),
    ]
    panels = [
        Panel("LOAD RPS", load),
        Panel("SIGNAL / UP THRESHOLD", ratios, hlines=[(1.0, (214, 39, 40))]),
        Panel("REPLICAS", replicas,
              hlines=[(float(policy.max_replicas), GREY), (float(policy.min_replicas), GREY)]),
    ]
    return timeline_png(xs, panels)


def _price(doc: Mapping[str, Any], pool: str, where: str) -> float | None:
    """pools.POOL.cost_per_hour of the config, if it gives one."""
    entry = (doc.get("pools") or {}).get(pool) or {}
    price = entry.get("cost_per_hour") if isinstance(entry, dict) else None
    if price is None:
        return None
    if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
        raise ValueError(f"{where}: pools.{pool}.cost_per_hour: expected a number >= 0")
    return float(price)


def _policy(args: argparse.Namespace) -> tuple[PoolScalePolicy, float | None]:
    """The pool's scale policy and its price per replica-hour (None: not priced)."""
    raw: dict[str, Any] = {}
    price = None
    if args.config:
        import yaml

        doc = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        pools = doc.get("autoscale") or {}
        if not isinstance(pools, dict) or not pools:
            raise ValueError(f"{args.config}: no autoscale block")
        pool = args.pool or (next(iter(pools)) if len(pools) == 1 else None)
        if pool is None or pool not in pools:
            raise ValueError(f"{args.config}: choose --pool from {', '.join(sorted(pools))}")
        raw = dict(pools[pool] or {})
        path = f"autoscale.{pool}"
        price = _price(doc, pool, args.config)
    else:
        path = "flags"
    for name in ("min_replicas", "max_replicas"):
        if getattr(args, name) is not None:
            raw[name] = getattr(args, name)
    return policy_from_mapping(raw, path), price


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infergate scale", description="scale-signal tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulate", help="replay a load trace through the scale controller")
    sim.add_argument("--trace", required=True, help="CSV or JSON lines: t_s, rps, p95_latency_ms, ...")
    sim.add_argument("--config", help="gateway YAML whose autoscale block gives the policy")
    sim.add_argument("--pool", help="which autoscale pool of --config (needed when it has several)")
    sim.add_argument("--min-replicas", type=int)
    sim.add_argument("--max-replicas", type=int)
    sim.add_argument("--initial-replicas", type=int, help="replicas at t=0 (default max(1, min_replicas))")
    sim.add_argument("--capacity-rps", type=float, help="per-replica capacity: adds rps_ratio")
    sim.add_argument("--provision-delay-s", type=float, default=0.0, help="decision-to-ready delay")
    sim.add_argument("--png", help="timeline image to write (default: <trace name>.png here)")
    sim.add_argument("--quiet", action="store_true", help="print only the summary line")
    sim.add_argument("--json", action="store_true",
                     help="print decisions, summary and cost as one JSON document")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    trace_path = Path(args.trace)
    try:
        policy, price = _policy(args)
        trace = load_trace(trace_path)
    except (OSError, ValueError) as exc:
        print(f"infergate scale simulate: {exc}", file=sys.stderr)
        return 2
    if args.initial_replicas is not None and args.initial_replicas < 0:
        print("infergate scale simulate: --initial-replicas must not be negative", file=sys.stderr)
        return 2
    steps = simulate(trace, policy, initial_replicas=args.initial_replicas,
                     capacity_rps_per_replica=args.capacity_rps, provision_delay_s=args.provision_delay_s)
    if not args.quiet and not args.json:
        print(format_table(steps))
    png_path = Path(args.png) if args.png else Path(trace_path.stem + ".png")
    try:
        png_path.write_bytes(render_png(steps, policy))
    except OSError as exc:
        print(f"infergate scale simulate: cannot write {png_path}: {exc}", file=sys.stderr)
        return 2
    counts = {d: sum(1 for s in steps if s.decision.direction == d) for d in ("up", "down", "hold")}
    peak = max(s.decision.desired_replicas for s in steps)
    cost = trace_cost(steps, price) if price is not None else None
    if args.json:
        summary = {"decisions": len(steps), **counts, "peak_replicas": peak,
                   "final_replicas": steps[-1].decision.desired_replicas, "timeline": str(png_path)}
        print(json.dumps({"summary": summary, "cost": cost.to_json() if cost else None,
                          "decisions": [_step_json(s) for s in steps]}))
        return 0
    print(f"{len(steps)} decisions: {counts['up']} up, {counts['down']} down, {counts['hold']} hold; "
          f"peak {peak} replicas; final {steps[-1].decision.desired_replicas}; timeline {png_path}")
    if cost is not None:
        print(cost.line())
    return 0


def _step_json(s: SimStep) -> dict[str, Any]:
    d = s.decision
    return {"t_s": s.point.t_s, "rps": s.point.rps, "p95_latency_ms": s.point.p95_latency_ms,
            "current_replicas": d.current_replicas, "desired_replicas": d.desired_replicas,
            "direction": d.direction, "reason": d.reason}


if __name__ == "__main__":
    sys.exit(main())
