"""Active health checks (model status per replica) and load scraping (GPU/CPU metrics).

Model status is read with TF Serving's REST status call (GET /v1/models/M), or GetModelStatus
over gRPC for a replica with no REST address. A replica is alive when it answers at all; a
version is routable there only while its state is AVAILABLE.

What must always hold:
- rise/fall: a replica that was up goes down after `fall` consecutive failed probes and comes
  back after `rise` consecutive good ones; a replica never seen up is routable after its first
  good probe (so start-up does not wait `rise` intervals);
- scraped load that is missing, unparseable or older than `metrics_stale_s` reads as unknown
  (None), never as idle;
- models are discovered on first use: an unknown name is probed on every replica once (calls for
  it share that probe), and a name no replica serves is remembered as absent for a short while.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import quote

import aiohttp
import grpc
import orjson

from gateway.config import GatewayConfig
from gateway.core.metrics import Metrics
from gateway.core.ratelimit import TokenBucket
from gateway.core.tasks import cancel_all, spawn
from gateway.core.wire import LEN, VARINT, WireError, encode_varint, iter_fields, read_varint
from gateway.fleet.outlier import OutlierDetector
from gateway.fleet.reach import Channels, client_ssl, rest_base
from gateway.fleet.replicas import ReplicaSet, ReplicaState

log = logging.getLogger("infergate.health")

STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
MAX_DISCOVERED = 1000  # names found on a replica that the gateway watches
MAX_ABSENT = 1024  # names remembered as served by no replica (oldest forgotten first)
LIVENESS_MODEL = "__infergate_liveness__"


class ProbeError(Exception):
    pass


def parse_status_json(body: bytes) -> dict[int, str]:
    data = orjson.loads(body)
    out: dict[int, str] = {}
    for item in data.get("model_version_status", []):
        out[int(item["version"])] = str(item.get("state", "UNKNOWN"))
    return out


def parse_status_proto(body: bytes) -> dict[int, str]:
    """GetModelStatusResponse: model_version_status = 1 {version = 1, state = 2, status = 3}."""
    out: dict[int, str] = {}
    for f, wt, _s, vs, end in iter_fields(body):
        if f != 1 or wt != LEN:
            continue
        item = body[vs:end]
        version, state = 0, 0
        for f2, wt2, _s2, vs2, _e2 in iter_fields(item):
            if wt2 == VARINT and f2 in (1, 2):
                v, _ = read_varint(item, vs2)
                if f2 == 1:
                    version = v
                else:
                    state = v
        out[version] = STATE_NAMES.get(state, "UNKNOWN")
    return out


def status_request_proto(model: str) -> bytes:
    name = model.encode()
    spec = b"\x0a" + encode_varint(len(name)) + name
    return b"\x0a" + encode_varint(len(spec)) + spec


# The range a sample must lie in to be used; one outside it is dropped like NaN. A negative
# utilisation would otherwise read as idle and draw every call, +Inf as saturated forever.
_SAMPLE_BOUNDS: dict[str, tuple[float, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": (0.0, 100.0),  # percent
    "DCGM_FI_DEV_FB_USED": (0.0, sys.float_info.max),  # MiB, finite
    "DCGM_FI_DEV_FB_FREE": (0.0, sys.float_info.max),
    "infergate_agent_cpu_util": (0.0, 1.0),
}


def parse_load_metrics(text: str) -> tuple[float | None, float | None, float | None]:
    """(gpu_util 0..1, gpu_mem_frac 0..1, cpu_util 0..1) from Prometheus text exposition.

    Reads dcgm-exporter's names (DCGM_FI_DEV_GPU_UTIL in percent, DCGM_FI_DEV_FB_USED/FREE in
    MiB; averaged over GPUs) and the agent's infergate_agent_cpu_util. A NaN or out-of-range sample
    is left out, so a reading made only of such samples is unknown (None). Raises ValueError when
    the text is not Prometheus exposition at all.
    """
    util: list[float] = []
    used: list[float] = []
    free: list[float] = []
    cpu: float | None = None
    parsed = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name_end = line.find("{")
        if name_end < 0:
            name, _, rest = line.partition(" ")
        else:
            name = line[:name_end]
            rest = line[line.rfind("}") + 1:]
        parts = rest.split()
        if not name or not parts:
            raise ValueError(f"not Prometheus text: {line[:60]!r}")
        value = float(parts[0])
        parsed += 1
        if math.isnan(value):
            continue
        bounds = _SAMPLE_BOUNDS.get(name)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            continue  # out of range (negative, +Inf, 250 %): as unusable as NaN, not idle or full
        if name == "DCGM_FI_DEV_GPU_UTIL":
            util.append(value / 100.0)
        elif name == "DCGM_FI_DEV_FB_USED":
            used.append(value)
        elif name == "DCGM_FI_DEV_FB_FREE":
            free.append(value)
        elif name == "infergate_agent_cpu_util":
            cpu = value
    if parsed == 0 and text.strip():
        raise ValueError("no samples")
    gpu = sum(util) / len(util) if util else None
    mem = None
    if used and free and len(used) == len(free):
        total = sum(used) + sum(free)
        mem = sum(used) / total if total > 0 else None
    return gpu, mem, cpu


class FleetView(Protocol):
    """What the health checker reads: the config in force and the replicas it built."""

    @property
    def cfg(self) -> GatewayConfig: ...

    @property
    def replicas(self) -> ReplicaSet: ...


class HealthChecker:
    def __init__(self, view: Callable[[], FleetView], metrics: Metrics,
                 outlier: OutlierDetector) -> None:
        self._view = view  # the current Runtime: a reload swaps it
        self.metrics = metrics
        self.outlier = outlier
        cfg = view().cfg
        self._channels = Channels(cfg.limits.max_message_bytes, cfg.upstream_tls)
        self._session: aiohttp.ClientSession | None = None
        self._discovering: dict[str, asyncio.Future[None]] = {}
        self._refreshing: dict[str, asyncio.Future[None]] = {}
        self._ssl_ctx: ssl.SSLContext | None = None
        self._ssl_for: object = None
        # A name no replica serves -> until when it is not probed again (insertion-ordered,
        # bounded: the oldest go first).
        self._absent: OrderedDict[str, float] = OrderedDict()
        self._limiter = TokenBucket(view().cfg.health.discovery_per_s,
                                    view().cfg.health.discovery_per_s, time.monotonic())
        self.discovered: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _ssl(self) -> ssl.SSLContext | bool:
        tls = self._view().cfg.upstream_tls
        if tls is None or not tls.rest:
            return True
        if self._ssl_for is not tls:
            self._ssl_ctx, self._ssl_for = client_ssl(tls), tls
        return self._ssl_ctx or True

    def _server_name(self) -> str | None:
        tls = self._view().cfg.upstream_tls
        return tls.server_name if tls is not None and tls.rest else None

    def watched(self) -> set[str]:
        return set(self._view().cfg.models) | self.discovered

    def start(self) -> None:
        self._tasks = [spawn(self._probe_loop(), "health-probes"),
                       spawn(self._scrape_loop(), "metrics-scrape")]

    async def stop(self) -> None:
        await cancel_all(list(self._tasks))
        await self._channels.close()
        if self._session is not None:
            await self._session.close()

    # ---- model status --------------------------------------------------------------------

    async def _probe_model(self, r: ReplicaState, model: str, timeout: float) -> dict[int, str]:
        if r.cfg.rest is not None:
            tls = self._view().cfg.upstream_tls
            url = f"{rest_base(r.cfg.rest, tls)}/v1/models/{quote(model, safe='')}"
            try:
                async with self.session().get(url, timeout=aiohttp.ClientTimeout(total=timeout),
                                              ssl=self._ssl(), server_hostname=self._server_name()
                                              ) as resp:
                    body = await resp.read()
                    if resp.status == 404:
                        return {}
                    if resp.status != 200:
                        raise ProbeError(f"status {resp.status}")
                    return parse_status_json(body)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
                raise ProbeError(repr(exc)) from None
        assert r.cfg.grpc is not None
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channels.get(
            r.cfg.grpc).unary_unary(
            "/tensorflow.serving.ModelService/GetModelStatus")
        try:
            reply: bytes = await stub(status_request_proto(model), timeout=timeout)
            return parse_status_proto(reply)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise ProbeError(err.code().name) from None
        except WireError as exc:
            raise ProbeError(str(exc)) from None

    async def probe_replica(self, r: ReplicaState, models: set[str]) -> None:
        hc = self._view().cfg.health
        # With no model to watch yet, a status call for a name no replica serves still proves
        # the replica answers (TF Serving says 404).
        names = list(models) or [LIVENESS_MODEL]
        try:
            results = await asyncio.gather(*(self._probe_model(r, m, hc.timeout_s) for m in names))
        except ProbeError as exc:
            self.metrics.probe_failures.labels(r.name).inc()
            r.successes = 0
            r.failures += 1
            if r.healthy and r.failures >= hc.fall:
                log.warning("replica %s is down: %s", r.name, exc)
                r.healthy = False
            return
        r.failures = 0
        r.successes += 1
        self.outlier.on_probe_passed(r, time.monotonic())
        for m, versions in zip(names, results, strict=True):
            if m != LIVENESS_MODEL:
                r.versions[m] = versions
        if not r.healthy and (r.successes >= hc.rise or not r.ever_up):
            log.info("replica %s is up", r.name)
            r.healthy = True
            r.ever_up = True

    async def probe_all(self) -> None:
        models = self.watched()
        reps = self._view().replicas
        await asyncio.gather(*(self.probe_replica(r, models) for r in reps.all))
        now = time.monotonic()
        reps.rebuild(now)
        for r in reps.all:
            self.metrics.replica_healthy.labels(r.name, r.pool).set(1 if r.healthy else 0)
        self.outlier.publish(reps, now)

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self.probe_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one round must not stop health checking
                log.exception("health probe round failed")
            await asyncio.sleep(self._view().cfg.health.interval_s)

    async def _once(self, pending: dict[str, asyncio.Future[None]], model: str,
                    work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` for `model` once however many calls ask at the same time."""
        fut = pending.get(model)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            pending[model] = fut

            async def run(done: asyncio.Future[None]) -> None:
                try:
                    await work()
                finally:
                    pending.pop(model, None)
                    if not done.done():
                        done.set_result(None)

            spawn(run(fut), f"probe-{model[:40]}")
        await asyncio.shield(fut)

    async def _probe_everywhere(self, model: str) -> None:
        reps = self._view().replicas
        timeout = self._view().cfg.health.timeout_s

        async def one(r: ReplicaState) -> None:
            try:
                r.versions[model] = await self._probe_model(r, model, timeout)
            except ProbeError:
                return

        await asyncio.gather(*(one(r) for r in reps.all))
        reps.rebuild()

    async def refresh(self, model: str) -> None:
        """Probe every replica for `model` now (a version the gateway chose was not found)."""
        await self._once(self._refreshing, model, lambda: self._probe_everywhere(model))

    async def discover(self, model: str) -> None:
        """Probe every replica for a model the gateway has not seen; calls share one probe.

        A name found absent is not probed again for `unknown_model_ttl_s`; new names are probed
        at most `discovery_per_s` per second. A call whose name is not probed is forwarded to
        one replica, which answers for itself (TF Serving's own 404 for a name it lacks)."""
        now = time.monotonic()
        until = self._absent.get(model)
        if until is not None:
            if now < until:
                self.metrics.discovery.labels("cached").inc()
                return
            del self._absent[model]
        if model not in self._discovering:
            hc = self._view().cfg.health
            self._limiter.rate = self._limiter.burst = hc.discovery_per_s
            if not self._limiter.take(now):
                self.metrics.discovery.labels("limited").inc()
                return
        await self._once(self._discovering, model, lambda: self._discover(model))

    async def _discover(self, model: str) -> None:
        await self._probe_everywhere(model)
        reps = self._view().replicas
        if reps.knows(model) and any(r.versions.get(model) for r in reps.all):
            self.metrics.discovery.labels("found").inc()
            if len(self.discovered) < MAX_DISCOVERED:
                self.discovered.add(model)
            return
        self.metrics.discovery.labels("absent").inc()
        for r in reps.all:
            r.versions.pop(model, None)
        reps.rebuild()
        self._absent[model] = time.monotonic() + self._view().cfg.health.unknown_model_ttl_s
        while len(self._absent) > MAX_ABSENT:
            self._absent.popitem(last=False)

    # ---- load metrics ---------------------------------------------------------------------

    async def scrape(self, r: ReplicaState) -> None:
        url = r.cfg.metrics
        if url is None:
            return
        hc = self._view().cfg.health
        # With `upstream_tls.rest`, an https metrics URL is the replica's TLS sidecar: it takes
        # the same CA, client certificate and server name as the REST port.
        https = url.startswith("https://")
        try:
            async with self.session().get(url, timeout=aiohttp.ClientTimeout(total=hc.timeout_s),
                                          ssl=self._ssl() if https else True,
                                          server_hostname=self._server_name() if https else None
                                          ) as resp:
                if resp.status != 200:
                    raise ValueError(f"status {resp.status}")
                text = (await resp.read()).decode("utf-8", "replace")
            gpu, mem, cpu = parse_load_metrics(text)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            self.metrics.scrape_failures.labels(r.name).inc()
            r.gpu.ok = False
            log.debug("metrics scrape of %s failed: %r", r.name, exc)
            return
        r.gpu.util, r.gpu.mem_frac, r.gpu.cpu_util = gpu, mem, cpu
        r.gpu.at = time.monotonic()
        r.gpu.ok = True
        self.metrics.replica_gpu_util.labels(r.name).set(-1 if gpu is None else gpu)

    async def _scrape_loop(self) -> None:
        while True:
            reps = self._view().replicas
            try:
                await asyncio.gather(*(self.scrape(r) for r in reps.all))
            except asyncio.CancelledError:
                raise
            except Exception:  # as in _probe_loop: one bad round must not end scraping for good
                log.exception("metrics scrape round failed")
            await asyncio.sleep(self._view().cfg.health.metrics_interval_s)
