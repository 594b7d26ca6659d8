"""What tracing costs: the native gateway without `tracing`, with it at sample_ratio 0.01 and
at 1.0 (every call a server span and a try span), spans sent over OTLP/HTTP to a real receiver
on loopback (tests/support/otlp.py, on the load generator's core).

What must always hold: the three gateways differ only in their `tracing` section and are
measured in interleaved repetitions, so the ratios compare like with like; the receiver must
have received spans from the traced gateways, or the figures say so instead of counting a
gateway that traced nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import procs
from benchmarks.load import RunResult

if TYPE_CHECKING:
    from benchmarks.scenarios import Bench, Target

RATIOS = (0.01, 1.0)


def _receiver(bench: Bench) -> tuple[Path, int]:
    folder = bench.workdir / "otlp"
    folder.mkdir(exist_ok=True)
    spans, ports = folder / "spans.jsonl", folder / "ports.json"
    bench.procs.start("otlp", [sys.executable, "-m", "tests.support.otlp", "--out", str(spans),
                               "--ports", str(ports)], bench.loadcpu)
    end = time.monotonic() + 30
    while not ports.exists():
        if time.monotonic() > end:
            raise RuntimeError(f"OTLP receiver not listening:\n{bench.procs.log('otlp')}")
        time.sleep(0.05)
    return spans, int(json.loads(ports.read_text())["http"])


def run_tracing(bench: Bench) -> dict[str, Any]:
    from benchmarks.scenarios import Target, check_grpc, check_rest

    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return {"skipped": "the `tracing` extra is not installed"}
    spans, port = _receiver(bench)
    b_rest, b_grpc = bench.backend
    off = next(t for t in bench.rest_targets if t.name == "gateway native")
    off_grpc = next(t for t in bench.grpc_targets if t.name == "gateway native")
    rest: list[Target] = [off]
    grpc: list[Target] = [off_grpc]
    for ratio in RATIOS:
        name = f"gw-tracing-{ratio:g}"
        tracing = {"otlp_endpoint": f"http://127.0.0.1:{port}", "protocol": "http",
                   "sample_ratio": ratio}
        cfg, ports = procs.gateway_config(bench.workdir, name, b_rest, b_grpc, "native",
                                          extra={"tracing": tracing})
        proc, _ = procs.start_gateway(bench.procs, name, cfg, bench.sut, ports["admin"])
        label = f"gateway native, tracing {ratio:g}"
        rest.append(Target(label, on_port(off.url, ports["rest"]), proc.pid))
        grpc.append(Target(label, on_port(off_grpc.url, ports["grpc"]), proc.pid))
        check_rest(rest[-1].url)
        check_grpc(grpc[-1].url)
    a = bench.args
    for t in rest:
        bench._rest(t, a.rest_conns, a.warmup)
    out_rest = bench._interleave(rest, lambda t: bench._rest(t, a.rest_conns, a.duration), a.reps)
    for t in grpc:
        bench._grpc(t, a.grpc_clients, a.grpc_streams, a.warmup, latency=False)
    out_grpc = bench._interleave(
        grpc, lambda t: bench._grpc(t, a.grpc_clients, a.grpc_streams, a.duration), a.reps)
    for ratio in RATIOS:
        bench.procs.stop(f"gw-tracing-{ratio:g}")  # a clean stop sends the spans still waiting
    received = sum(1 for _ in spans.open()) if spans.exists() else 0
    bench.procs.stop("otlp")
    return {"rest": out_rest, "grpc": out_grpc, "spans": received,
            "ratio": {proto: _ratios(runs) for proto, runs in (("REST", out_rest),
                                                                ("gRPC", out_grpc))}}


def on_port(url: str, port: int) -> str:
    """`url` (http://127.0.0.1:N/path) on another loopback port."""
    scheme, _, hostport, path = url.split("/", 3)
    return f"{scheme}//127.0.0.1:{port}/{path}"


def _ratios(runs: dict[str, RunResult]) -> dict[str, float | None]:
    base = runs["gateway native"].rps
    return {name: (r.rps / base if base else None) for name, r in runs.items()
            if name != "gateway native"}
