"""The gateway process: listeners, lifecycle, config reload swap and graceful drain.

`Gateway` is the application object every component receives (no globals). `Runtime` is what a
config builds: the config itself, the replica set and the compiled model routers. A reload
builds a new Runtime next to the old one and swaps the reference; calls in flight finish on the
Runtime they started with.

What must always hold:
- a config that fails to load or build changes nothing: the old Runtime keeps serving and the
  failure is logged, counted and shown in /api/config;
- on SIGTERM /readyz fails at once, listeners stop taking new calls, calls in flight finish
  within `limits.drain_s`, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from gateway.budget import RetryBudget
from gateway.busypoll import BusyPoller
from gateway.cache import PredictionCache
from gateway.call import Answer
from gateway.config import ConfigError, GatewayConfig, Hedge, Tls, load_config
from gateway.fastrest import NativeRestForwarder, start_rest_listener
from gateway.health import HealthChecker
from gateway.http2 import GrpcListener, NativeGrpcForwarder, start_grpc_listener
from gateway.ingress_grpc import GrpcIngress
from gateway.ingress_rest import RestIngress
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.replicas import ReplicaSet, ReplicaState
from gateway.rollout import Transition
from gateway.rollout_manager import RolloutManager
from gateway.rollout_state import make_store
from gateway.routing import ModelRouter, default_router
from gateway.scale_service import ScaleService
from gateway.tasks import cancel_all, spawn
from gateway.traffic import TrafficStats
from gateway.upstream import GrpcForwarder, RestForwarder
from gateway.webhooks import Webhooks

log = logging.getLogger("infergate")
Overrides = Callable[[str], tuple[dict[str, float] | None, dict[str, int]]]


class Runtime:
    """Everything built from one config. Immutable once built, except the replica facts and the
    lazily compiled routers of models discovered on first use."""

    def __init__(self, cfg: GatewayConfig, previous: Runtime | None = None,
                 overrides: Overrides | None = None) -> None:
        self.cfg = cfg
        self.overrides = overrides
        self.replicas: ReplicaSet = ReplicaSet(cfg.replicas, cfg.health.metrics_stale_s,
                                               previous.replicas if previous else None)
        self.routers: dict[str, ModelRouter] = {name: self.build_router(name) for name in cfg.models}
        self.admission_limit = (cfg.limits.max_in_flight_per_replica * max(1, len(cfg.replicas))
                                + cfg.limits.max_queue)

    def build_router(self, name: str) -> ModelRouter:
        """Compile a configured model's router, with any rollout weights and label moves."""
        weights, labels = self.overrides(name) if self.overrides else (None, {})
        return ModelRouter(name, self.cfg.models[name], self.cfg.default_balance, weights, labels)

    def router(self, model: str) -> ModelRouter:
        r = self.routers.get(model)
        if r is None:
            r = default_router(model, self.cfg.default_balance)
            if self.replicas.knows(model):  # keep only routers of models a replica serves
                self.routers[model] = r
        return r

    def hedge_for(self, model: str | None) -> Hedge | None:
        m = self.cfg.models.get(model) if model else None
        return m.hedge if m else None

    def timeout_for(self, model: str | None) -> float:
        m = self.cfg.models.get(model) if model else None
        return m.timeout_s if m else 30.0


class Gateway:
    def __init__(self, cfg: GatewayConfig, config_path: Path | None = None) -> None:
        self.config_path = config_path
        self.metrics = Metrics()
        self.metrics.config_ok.set(1)  # the config the process started with is valid
        self.rollouts = RolloutManager(make_store(cfg.cache.store, cfg.state_file),
                                       on_change=self._on_rollout_change, metrics=self.metrics)
        self.rollouts.configure(cfg.models)
        self.runtime = Runtime(cfg, overrides=self._overrides)
        # The native engines speak plain HTTP/1.1 and h2c upstream; TLS to replicas goes through
        # the compat forwarders.
        native = cfg.listen.engine == "native" and cfg.upstream_tls is None
        self.rest_fwd: RestForwarder | NativeRestForwarder = (
            NativeRestForwarder() if native else RestForwarder(cfg.upstream_tls))
        self.grpc_fwd: GrpcForwarder | NativeGrpcForwarder = (
            NativeGrpcForwarder(cfg.limits.max_message_bytes) if native
            else GrpcForwarder(cfg.limits.max_message_bytes, cfg.upstream_tls))
        self.reuse_port = False  # set by `infergate run --workers N`: N processes share ports
        self.serve_admin = True  # only the first worker serves the admin API
        self.health = HealthChecker(self)
        self.webhooks = Webhooks(lambda: self.runtime.cfg.webhooks, self.health.session)
        self.scale = ScaleService(self)
        self.traffic = TrafficStats()
        self.pipeline = Pipeline(self)
        self.retry_budget = RetryBudget(cfg.retries.budget_ratio, cfg.retries.min_per_s,
                                        time.monotonic)
        self.total_in_flight = 0
        self.active_calls = 0  # calls an ingress has taken and not yet answered
        self.busy_poller: BusyPoller | None = None  # listen.busy_poll_us, set up at start
        self.queued = 0  # calls waiting for a replica below its in-flight cap
        self.slot_freed = asyncio.Event()  # replaced on every wake-up; waiters re-check
        self.caches: dict[str, PredictionCache] = {}
        self._cache_specs: dict[str, tuple[object, ...]] = {}
        self._sync_caches(cfg)
        self.draining = False
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.last_reload: dict[str, Any] = {"ok": True, "error": None, "at": time.time()}
        self._config_mtime = _mtime(config_path)
        self._tasks: list[asyncio.Task[None]] = []
        self._rest_server: asyncio.AbstractServer | None = None
        self._grpc_server: grpc.aio.Server | GrpcListener | None = None
        self._admin_runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.bound: dict[str, int] = {}

    # ---- completion hooks ------------------------------------------------------------------

    def model_label(self, model: str | None) -> str:
        """A model name safe to use as a metric label (bounded set)."""
        if model is None:
            return ""
        if model in self.runtime.cfg.models or model in self.health.discovered:
            return model
        return "_other"

    def observe_call(self, protocol: str, model: str | None, answer: Answer | None, code: str,
                     t0: float) -> None:
        """Completion hook of every answered call (answer None: the gateway answered an error)."""
        m = self.model_label(model)
        version = "" if answer is None or answer.version is None else str(answer.version)
        now = time.monotonic()
        elapsed = now - t0
        mx = self.metrics
        mx.child(mx.requests, protocol, m, version, answer.replica if answer else "", code).inc()
        mx.child(mx.latency, protocol, m).observe(elapsed)
        if m:
            ok = answer is not None and answer.ok(protocol)
            self.traffic.observe(m, answer.arm if answer else "", version, ok, elapsed, now)
            if answer is not None and answer.arm:
                self.on_arm_done(m, answer, ok, elapsed)

    def on_arm_done(self, model: str, answer: Answer, ok: bool, seconds: float) -> None:
        self.rollouts.observe(model, answer.arm, ok, seconds)

    def _overrides(self, model: str) -> tuple[dict[str, float] | None, dict[str, int]]:
        return self.rollouts.weights(model), self.rollouts.label_overrides(model)

    def _on_rollout_change(self, t: Transition) -> None:
        """A rollout stepped, was promoted or rolled back: recompile that model's routing now."""
        rt = self.runtime
        if t.model in rt.cfg.models:
            rt.routers[t.model] = rt.build_router(t.model)
        log.info("rollout %s: %s (step %d, canary weight %.0f%%): %s", t.model, t.kind, t.step,
                 t.weight, t.reason)
        self.webhooks.notify({"event": "rollout", "model": t.model, **t.to_json()})

    @contextlib.contextmanager
    def active_call(self) -> Iterator[None]:
        """Counts a call from the moment an ingress has it until its answer is handed back:
        the drain waits for these, not only for calls out at replicas."""
        self.call_started()
        try:
            yield
        finally:
            self.active_calls -= 1

    def call_started(self) -> None:
        """An ingress has taken a call (the count a drain waits for; busy polling starts)."""
        self.active_calls += 1
        if self.busy_poller is not None:
            self.busy_poller.kick()

    def wake_queue(self) -> None:
        """A replica slot freed: wake every queued call to re-check (each re-ranks)."""
        ev, self.slot_freed = self.slot_freed, asyncio.Event()
        ev.set()

    def on_upstream_done(self, replica: ReplicaState, seconds: float, now: float) -> None:
        self.metrics.child(self.metrics.upstream_latency, replica.name).observe(seconds)
        self.scale.observe(replica.pool, seconds, now)

    # ---- reload ------------------------------------------------------------------------------

    async def reload(self) -> tuple[bool, str | None]:
        """Load the config file again; swap it in if valid. Returns (ok, error).

        Replicas the gateway has never seen are probed before the swap (bounded by the health
        timeout), so calls right after a reload that moves to new hosts find them routable."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> tuple[bool, str | None]:
        if self.config_path is None:
            return False, "the gateway was started without a config file"
        try:
            cfg = load_config(self.config_path)
            self._check_static(cfg)
            self.rollouts.configure(cfg.models)
            runtime = Runtime(cfg, self.runtime, self._overrides)
        except (ConfigError, ValueError) as exc:
            msg = str(exc)
            log.error("config reload refused, the old config keeps serving:\n%s", msg)
            self.metrics.reloads.labels("refused").inc()
            self.metrics.config_ok.set(0)
            self.last_reload = {"ok": False, "error": msg, "at": time.time()}
            return False, msg
        fresh = [r for r in runtime.replicas.all if not r.ever_up]
        if fresh:
            models = set(cfg.models) | self.health.discovered
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(self.health.probe_replica(r, models) for r in fresh)),
                    cfg.health.timeout_s + 0.5)
            except TimeoutError:
                log.warning("new replicas did not all answer their first probe before the swap")
            runtime.replicas.rebuild()
        self.runtime = runtime
        self._sync_caches(cfg)
        self.scale.configure()
        self.retry_budget.ratio = cfg.retries.budget_ratio
        self.retry_budget.min_per_s = cfg.retries.min_per_s
        self.metrics.reloads.labels("applied").inc()
        self.metrics.config_ok.set(1)
        self.last_reload = {"ok": True, "error": None, "at": time.time()}
        log.info("config reloaded from %s", self.config_path)
        spawn(self.health.probe_all(), "probe-after-reload")
        return True, None

    def _sync_caches(self, cfg: GatewayConfig) -> None:
        """One PredictionCache per model with `cache.exact`; kept across reloads that do not
        change its parameters, so a reload does not empty the cache."""
        caches: dict[str, PredictionCache] = {}
        specs: dict[str, tuple[object, ...]] = {}
        for name, m in cfg.models.items():
            if m.cache is None or m.cache.exact is None:
                continue
            e = m.cache.exact
            spec = (cfg.cache.store, e.ttl_s, e.max_bytes, e.max_entry_bytes)
            old = self.caches.get(name)
            if old is not None and self._cache_specs.get(name) == spec:
                caches[name] = old
            else:
                caches[name] = PredictionCache(
                    cfg.cache.store, ttl_s=e.ttl_s, max_bytes=e.max_bytes,
                    max_entry_bytes=e.max_entry_bytes, spawn=spawn,
                    key_prefix=f"infergate:cache:{name}:")
            specs[name] = spec
        retired = [c for n, c in self.caches.items() if caches.get(n) is not c]
        self.caches, self._cache_specs = caches, specs
        for c in retired:
            spawn(c.aclose(), "cache-close")

    def _check_static(self, cfg: GatewayConfig) -> None:
        if cfg.listen != self.runtime.cfg.listen:
            raise ValueError("listen: addresses cannot change without a restart")
        if cfg.upstream_tls != self.runtime.cfg.upstream_tls:
            raise ValueError("upstream_tls: cannot change without a restart")

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            m = _mtime(self.config_path)
            if m != self._config_mtime:
                self._config_mtime = m
                await self.reload()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        from gateway.admin import build_admin_app

        cfg = self.runtime.cfg
        loop = asyncio.get_running_loop()
        if cfg.listen.busy_poll_us:
            self.busy_poller = BusyPoller(
                loop, cfg.listen.busy_poll_us / 1e6,
                lambda: self.active_calls > 0 or self.total_in_flight > 0)
        try:
            await asyncio.wait_for(self.health.probe_all(), cfg.health.timeout_s * 2 + 1)
        except TimeoutError:
            log.warning("first health round did not finish in time; serving anyway")
        await self.rollouts.restore()
        self.runtime.routers = {n: self.runtime.build_router(n) for n in cfg.models}
        self._tasks.append(spawn(self.rollouts.run(1.0), "rollouts"))
        self.health.start()
        self._tasks.append(self.scale.start())
        if cfg.listen.rest and cfg.listen.engine == "native":
            host, port = _split(cfg.listen.rest)
            self._rest_server = await start_rest_listener(self, host, port, self.reuse_port,
                                                          _server_ssl(cfg.listen.tls))
            self.bound["rest"] = self._rest_server.sockets[0].getsockname()[1]
        elif cfg.listen.rest:
            host, port = _split(cfg.listen.rest)
            # Bodies are forwarded as received (gzip included): the replica decompresses them.
            ingress = RestIngress(self)
            server = web.Server(ingress.handle, access_log=None, auto_decompress=False,
                                logger=ingress.server_logger())
            self._rest_server = await loop.create_server(server, host, port, backlog=1024,
                                                         reuse_address=True,
                                                         reuse_port=self.reuse_port or None,
                                                         ssl=_server_ssl(cfg.listen.tls))
            self.bound["rest"] = self._rest_server.sockets[0].getsockname()[1]
        if cfg.listen.grpc and cfg.listen.engine == "native":
            host, port = _split(cfg.listen.grpc)
            listener = await start_grpc_listener(self, host, port, self.reuse_port,
                                                 _server_ssl(cfg.listen.tls))
            self._grpc_server = listener
            self.bound["grpc"] = listener.port
        elif cfg.listen.grpc:
            mx = cfg.limits.max_message_bytes
            self._grpc_server = grpc.aio.server(options=[
                ("grpc.max_send_message_length", mx), ("grpc.max_receive_message_length", mx),
                ("grpc.so_reuseport", int(self.reuse_port))])
            self._grpc_server.add_generic_rpc_handlers((GrpcIngress(self),))
            tls = cfg.listen.tls
            if tls is None:
                self.bound["grpc"] = self._grpc_server.add_insecure_port(cfg.listen.grpc)
            else:
                creds = grpc.ssl_server_credentials(
                    [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
                    root_certificates=Path(tls.client_ca).read_bytes() if tls.client_ca else None,
                    require_client_auth=tls.client_ca is not None)
                self.bound["grpc"] = self._grpc_server.add_secure_port(cfg.listen.grpc, creds)
            await self._grpc_server.start()
        if cfg.listen.admin and self.serve_admin:
            host, port = _split(cfg.listen.admin)
            self._admin_runner = web.AppRunner(build_admin_app(self), access_log=None)
            await self._admin_runner.setup()
            site = web.TCPSite(self._admin_runner, host, port)
            await site.start()
            admin_server = site._server
            if isinstance(admin_server, asyncio.AbstractServer):
                sockets = getattr(admin_server, "sockets", None) or []
                if sockets:
                    self.bound["admin"] = sockets[0].getsockname()[1]
        if self.config_path is not None:
            self._tasks.append(spawn(self._watch_config(), "config-watch"))
        self.ready_at = time.monotonic()
        log.info("infergate ready in %.2f s: %s", self.ready_at - self.started_at,
                 ", ".join(f"{k}={v}" for k, v in self.bound.items()))

    def ready(self) -> bool:
        return (not self.draining and self.ready_at is not None
                and bool(self.runtime.replicas.routable(time.monotonic())))

    async def drain_and_stop(self) -> None:
        """Graceful drain: stop taking calls, let calls in flight finish, then close."""
        if self.draining:
            return
        self.draining = True
        grace = self.runtime.cfg.limits.drain_s
        log.info("draining: %d calls in flight, grace %.1f s", self.total_in_flight, grace)
        if self._rest_server is not None:
            self._rest_server.close()
        grpc_stop = self._grpc_server.stop(grace) if self._grpc_server is not None else None
        end = time.monotonic() + grace
        while (self.active_calls > 0 or self.total_in_flight > 0) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # let the last answers' bytes leave before closing
        if grpc_stop is not None:
            await grpc_stop
        await self.close()

    async def close(self) -> None:
        await cancel_all(self._tasks)
        await self.rollouts.close()
        await self.health.stop()
        await self.rest_fwd.close()
        await self.grpc_fwd.close()
        for c in self.caches.values():
            await c.aclose()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        self._stopped.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: spawn(self.reload(), "reload-sighup"))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: spawn(self.drain_and_stop(), "drain"))
        await self._stopped.wait()


def _server_ssl(tls: Tls | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca:
        ctx.load_verify_locations(tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


async def run_gateway(cfg: GatewayConfig, config_path: Path | None, worker: int = 0,
                      workers: int = 1) -> int:
    gw = Gateway(cfg, config_path)
    gw.reuse_port = workers > 1
    gw.serve_admin = worker == 0
    await gw.start()
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
