"""What `infergate replay` concludes: the outcome of each replayed call, the summary (agreement,
status changes, latency against the log) with its verdict, and the table printed from it.

What must always hold: the table and the JSON report are made from the same summary; a limit
that was not given never fails a replay; a compared call that the candidate failed is a
disagreement (a candidate that fails everything must not pass as "no disagreement").
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

EXAMPLES = 10  # disagreements shown in the report


@dataclass(slots=True)
class Outcome:
    line: int  # the record's place in the log (1-based, rotations first)
    protocol: str
    model: str
    logged_status: int
    status: int  # the candidate's; -1: no answer (error)
    logged_ms: float
    ms: float
    error: str | None = None
    agreed: bool | None = None  # None: not compared
    detail: dict[str, str] = field(default_factory=dict)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarize(outcomes: list[Outcome], skipped: dict[str, int], max_disagreement: float | None,
              max_latency_ratio: float | None, compared: bool) -> dict[str, Any]:
    samples = [o for o in outcomes if o.agreed is not None]
    disagreed = [o for o in samples if not o.agreed]
    changes: dict[str, int] = {}
    for o in outcomes:
        if o.status != o.logged_status:
            key = f"{o.logged_status}->{o.status}"
            changes[key] = changes.get(key, 0) + 1
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error:
            errors[o.error] = errors.get(o.error, 0) + 1
    answered = [o for o in outcomes if o.error is None]  # a refused connection is no latency
    logged = [o.logged_ms for o in answered]
    replayed = [o.ms for o in answered]
    lp50, rp50 = _quantile(logged, 0.5), _quantile(replayed, 0.5)
    ratio = rp50 / lp50 if lp50 and rp50 is not None else None
    share = len(disagreed) / len(samples) if samples else None
    failures = []
    if max_disagreement is not None and (share is None or share > max_disagreement):
        failures.append(f"disagreement {_pct(share)} over the limit {_pct(max_disagreement)}"
                        if share is not None else "no answer could be compared")
    if max_latency_ratio is not None and ratio is not None and ratio > max_latency_ratio:
        failures.append(f"latency ratio {ratio:.2f} over the limit {max_latency_ratio:.2f}")
    return {
        "records": len(outcomes) + sum(skipped.values()),
        "sent": len(outcomes),
        "skipped": skipped,
        "compared": len(samples) if compared else None,
        "agreed": len(samples) - len(disagreed) if compared else None,
        "disagreed": len(disagreed) if compared else None,
        "disagreement": share,
        "status_changes": changes,
        "errors": errors,
        "latency_ms": {
            "logged": {"p50": lp50, "p95": _quantile(logged, 0.95)},
            "replayed": {"p50": rp50, "p95": _quantile(replayed, 0.95)},
        },
        "latency_ratio": ratio,
        "limits": {"max_disagreement": max_disagreement, "max_latency_ratio": max_latency_ratio},
        "passed": not failures,
        "failures": failures,
        "examples": [{"line": o.line, "protocol": o.protocol, "model": o.model,
                      "logged_status": o.logged_status, "status": o.status, **o.detail}
                     for o in disagreed[:EXAMPLES]],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.2f} %"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} ms"


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    lat = report["latency_ms"]
    out = [("records", str(report["records"])), ("sent", str(report["sent"])),
           ("skipped", ", ".join(f"{k}: {v}" for k, v in report["skipped"].items()) or "0")]
    if report["compared"] is not None:
        out += [("compared", str(report["compared"])), ("agreed", str(report["agreed"])),
                ("disagreed", str(report["disagreed"])),
                ("disagreement", _pct(report["disagreement"]))]
    out += [("status changes", ", ".join(f"{k}: {v}" for k, v in report["status_changes"].items())
             or "none"),
            ("errors", ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"),
            ("latency p50 logged / replayed",
             f"{_ms(lat['logged']['p50'])} / {_ms(lat['replayed']['p50'])}"),
            ("latency p95 logged / replayed",
             f"{_ms(lat['logged']['p95'])} / {_ms(lat['replayed']['p95'])}"),
            ("latency ratio (p50)",
             "-" if report["latency_ratio"] is None else f"{report['latency_ratio']:.2f}"),
            ("verdict", "PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))]
    return out


def print_table(report: dict[str, Any]) -> None:
    """The summary on stdout: a rich table when the `replay` extra is installed, else text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        width = max(len(k) for k, _ in rows(report))
        for k, v in rows(report):
            sys.stdout.write(f"{k.ljust(width)}  {v}\n")
        return
    table = Table(title="infergate replay", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for k, v in rows(report):
        table.add_row(k, v)
    Console(soft_wrap=True).print(table)
