"""`infergate agent`: one small process per replica node exporting its GPU and CPU load.

Owns the node-side half of the load signals: it reads GPUs through NVML (the `nvidia-ml-py`
package, imported lazily so the module loads on machines without it) and the host CPU from
/proc/stat deltas, and serves Prometheus text on `GET /metrics`.

Exposition (names chosen so the gateway and any Prometheus read it like dcgm-exporter):
- `DCGM_FI_DEV_GPU_UTIL` (percent 0..100), `DCGM_FI_DEV_FB_USED`, `DCGM_FI_DEV_FB_FREE` (MiB), one
  sample per GPU with dcgm-exporter's labels gpu, UUID, pci_bus_id, device, modelName, Hostname;
- `infergate_agent_cpu_util`: busy fraction 0..1 of all CPUs over the last interval (busy = every
  /proc/stat mode except idle and iowait);
- `infergate_agent_cpu_seconds_total{mode}`: the same aggregate /proc/stat line as counters in
  seconds, node_exporter's `node_cpu_seconds_total` summed over CPUs (hence its own name);
- `infergate_agent_nvml_available` 1 when NVML initialised, else 0; `infergate_agent_gpus`;
  `infergate_agent_nvml_errors_total` (device reads that failed).

Always true: without NVML (no package, no driver, no GPU) the agent logs one line saying why and
keeps serving the CPU figures; it depends only on aiohttp (and nvidia-ml-py when present) and the
standard-library-only `gateway.core.tasks`, so `python -m gateway.commands.agent` runs from a source checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from aiohttp import web

from gateway.core.tasks import cancel_all, spawn

log = logging.getLogger("infergate.agent")

_MIB = 1024 * 1024
# /proc/stat modes of the aggregate "cpu" line, in order (proc(5)). guest and guest_nice are
# already counted in user and nice, so they stay out of the total.
_CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_IDLE_MODES = frozenset({"idle", "iowait"})


@dataclass(frozen=True, slots=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    minor: int
    util_percent: float
    fb_used_mib: float
    fb_free_mib: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    nvml_available: bool
    gpus: tuple[GpuReading, ...]
    cpu_util: float | None
    cpu_seconds: dict[str, float]
    nvml_errors: int


class CpuSampler:
    """Busy fraction of all CPUs between successive reads of /proc/stat."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self._path = path
        self._prev: list[int] | None = None
        self._hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0

    def _read(self) -> list[int] | None:
        try:
            with open(self._path, encoding="ascii") as fh:
                first = fh.readline().split()
        except OSError:
            return None
        if not first or first[0] != "cpu":
            return None
        ticks = [int(x) for x in first[1 : 1 + len(_CPU_MODES)]]
        return ticks + [0] * (len(_CPU_MODES) - len(ticks))

    def sample(self) -> tuple[float | None, dict[str, float]]:
        """(utilisation since the previous call or None on the first, counters in seconds)."""
        ticks = self._read()
        if ticks is None:
            return None, {}
        seconds = {mode: t / self._hz for mode, t in zip(_CPU_MODES, ticks, strict=True)}
        util: float | None = None
        if self._prev is not None:
            delta = [now - before for now, before in zip(ticks, self._prev, strict=True)]
            total = sum(delta)
            idle = sum(d for mode, d in zip(_CPU_MODES, delta, strict=True) if mode in _IDLE_MODES)
            util = max(0.0, min(1.0, (total - idle) / total)) if total > 0 else None
        self._prev = ticks
        return util, seconds


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuSampler:
    """NVML reader; `available` is False (with `reason`) when NVML cannot be used."""

    def __init__(self, nvml: ModuleType | None, reason: str) -> None:
        self._nvml = nvml
        self.reason = reason
        self.errors = 0

    @property
    def available(self) -> bool:
        return self._nvml is not None

    @classmethod
    def open(cls, loader: Callable[[], ModuleType] | None = None) -> GpuSampler:
        """Import and initialise NVML; never raises."""
        try:
            nvml = loader() if loader is not None else _import_pynvml()
        except ImportError as exc:
            return cls(None, f"nvidia-ml-py is not installed ({exc})")
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            return cls(None, f"NVML did not initialise: {exc}")
        except OSError as exc:  # a broken driver library can fail at load time
            return cls(None, f"NVML library failed to load: {exc}")
        return cls(nvml, "")

    def sample(self) -> tuple[GpuReading, ...]:
        nvml = self._nvml
        if nvml is None:
            return ()
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            self.errors += 1
            log.warning("NVML device count failed: %s", exc)
            return ()
        out: list[GpuReading] = []
        for i in range(count):
            try:
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                util = nvml.nvmlDeviceGetUtilizationRates(h)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
                pci = nvml.nvmlDeviceGetPciInfo(h)
                out.append(GpuReading(
                    index=i,
                    uuid=_text(nvml.nvmlDeviceGetUUID(h)),
                    name=_text(nvml.nvmlDeviceGetName(h)),
                    pci_bus_id=_text(pci.busId),
                    minor=int(nvml.nvmlDeviceGetMinorNumber(h)),
                    util_percent=float(util.gpu),
                    fb_used_mib=mem.used / _MIB,
                    fb_free_mib=mem.free / _MIB,
                ))
            except nvml.NVMLError as exc:
                # One GPU failing (e.g. fallen off the bus) must not hide the others.
                self.errors += 1
                log.warning("NVML read of GPU %d failed: %s", i, exc)
        return tuple(out)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                log.debug("nvmlShutdown: %s", exc)
            self._nvml = None


def _import_pynvml() -> ModuleType:
    import importlib

    return importlib.import_module("pynvml")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(snap: Snapshot, hostname: str) -> str:
    """Prometheus text exposition 0.0.4 of one snapshot."""
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {_num(value)}" for labels, value in samples)

    def gpu_labels(g: GpuReading) -> str:
        pairs = (("gpu", str(g.index)), ("UUID", g.uuid), ("pci_bus_id", g.pci_bus_id),
                 ("device", f"nvidia{g.minor}"), ("modelName", g.name), ("Hostname", hostname))
        return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"

    if snap.gpus:
        family("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).",
               [(gpu_labels(g), g.util_percent) for g in snap.gpus])
        family("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).",
               [(gpu_labels(g), g.fb_free_mib) for g in snap.gpus])
        family("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).",
               [(gpu_labels(g), g.fb_used_mib) for g in snap.gpus])
    if snap.cpu_util is not None:
        family("infergate_agent_cpu_util", "gauge", "Busy fraction of all CPUs over the last interval.",
               [("", snap.cpu_util)])
    if snap.cpu_seconds:
        family("infergate_agent_cpu_seconds_total", "counter", "CPU time summed over all CPUs, by mode.",
               [(f'{{mode="{m}"}}', s) for m, s in snap.cpu_seconds.items()])
    family("infergate_agent_nvml_available", "gauge", "1 when NVML initialised on this node, else 0.",
           [("", 1.0 if snap.nvml_available else 0.0)])
    family("infergate_agent_gpus", "gauge", "GPUs read in the last interval.", [("", float(len(snap.gpus)))])
    family("infergate_agent_nvml_errors_total", "counter", "NVML reads that failed.",
           [("", float(snap.nvml_errors))])
    return "\n".join(lines) + "\n"


class Agent:
    """Samples every `interval_s` and serves the latest rendering."""

    def __init__(self, gpu: GpuSampler, cpu: CpuSampler, interval_s: float, hostname: str) -> None:
        self.gpu = gpu
        self.cpu = cpu
        self.interval_s = interval_s
        self.hostname = hostname
        self.body = render(Snapshot(gpu.available, (), None, {}, 0), hostname)

    def sample_once(self) -> None:
        gpus = self.gpu.sample()
        util, seconds = self.cpu.sample()
        snap = Snapshot(self.gpu.available, gpus, util, seconds, self.gpu.errors)
        self.body = render(snap, self.hostname)

    async def run(self) -> None:
        while True:
            # NVML calls block for up to milliseconds; keep them off the event loop.
            await asyncio.to_thread(self.sample_once)
            await asyncio.sleep(self.interval_s)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.body, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(listen: tuple[str, int], interval_s: float, gpu: GpuSampler) -> None:
    """Serve until SIGINT/SIGTERM."""
    agent = Agent(gpu, CpuSampler(), interval_s, socket.gethostname())
    app = web.Application()
    app.router.add_get("/metrics", agent.metrics)
    app.router.add_get("/healthz", agent.healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, listen[0], listen[1])
    await site.start()
    host, port = runner.addresses[0][:2]
    # The first line on stdout names the bound address (tests and scripts read it for port 0).
    print(f"infergate agent listening on http://{host}:{port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sampler = spawn(agent.run(), name="agent-sampler")
    try:
        await stop.wait()
    finally:
        await cancel_all([sampler])
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infergate agent", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_parse_listen, default=("127.0.0.1", 9400),
                        help="HOST:PORT to serve /metrics on (default 127.0.0.1:9400; port 0 picks one)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.interval <= 0:
        parser.error("--interval must be above 0")
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gpu = GpuSampler.open()
    if gpu.available:
        log.info("NVML available: exporting GPU utilisation and memory")
    else:
        log.warning("NVML unavailable, serving CPU figures only: %s", gpu.reason)
    try:
        asyncio.run(serve(args.listen, args.interval, gpu))
    except OSError as exc:
        print(f"infergate agent: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}", file=sys.stderr)
        return 2
    finally:
        gpu.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
