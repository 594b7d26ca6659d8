"""Running a gateway process: build, start, serve until SIGTERM has drained it."""

from __future__ import annotations

import gc
from pathlib import Path

from gateway.app.gateway import Gateway
from gateway.config import GatewayConfig


async def run_gateway(cfg: GatewayConfig, config_path: Path | None, worker: int = 0,
                      workers: int = 1, workers_folder: str | None = None) -> int:
    """Serve until drained. `workers_folder`: what the workers of `--workers N` share (scale
    decisions and rollout lease without Redis, and /metrics)."""
    gw = Gateway(cfg, config_path, reuse_port=workers > 1, serve_admin=worker == 0,
                 workers_folder=workers_folder)
    try:
        await gw.start()
    except OSError:  # a port taken: close what started (probes, pools) before saying so
        await gw.close()
        raise
    tune_gc()
    await gw.serve_forever()
    return 0


def tune_gc() -> None:
    """Settle the cyclic garbage collector for a long-running data plane.

    What exists once the gateway has started (modules, config, routing tables, metric families)
    lives as long as the process: frozen, full collections no longer walk it. Calls allocate
    several containers each and free nearly all of them by reference counting, so the default
    young-generation threshold (700) ran a collection every few dozen calls; at 10,000 the few
    cycles calls do leave (exceptions with their tracebacks, for one) are still collected within
    a fraction of a second under load."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)
