"""The composition root: builds every component from a config, wires the narrow interfaces
between them, swaps configs on reload and drains on SIGTERM.

`Gateway` owns the components; each receives only what it uses (a getter for the current
Runtime, the metrics, a callback), never the Gateway itself. It implements the ingress layer's
`IngressHost` (the pipeline, the completion hook, the call count a drain waits for).

What must always hold:
- a config that fails to load or build changes nothing: the old Runtime keeps serving and the
  failure is logged, counted and shown in /api/config; a setting that cannot change on live
  listeners refuses the reload with a reason instead of applying halfway;
- on SIGTERM /readyz fails at once; the listeners keep accepting and serving for
  `limits.drain_delay_s` (REST answers close their connections, gRPC connections get GOAWAY),
  then close; calls in flight finish within `limits.drain_s`; then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from gateway.app.caches import ModelCaches
from gateway.app.cost_feed import CostFeed
from gateway.app.fleet_metrics import publish_worker_metrics
from gateway.app.listeners import Listeners
from gateway.app.observability import Observability
from gateway.app.reload_rules import check_static
from gateway.app.webhooks import Webhooks
from gateway.config import ConfigError, GatewayConfig, Replica, load_config
from gateway.core.call import Answer, Call, Forwarder
from gateway.core.metrics import Metrics
from gateway.core.shared import FileShared, SharedStore, make_shared
from gateway.core.tasks import cancel_all, spawn
from gateway.fleet.discovery import DnsDiscovery
from gateway.fleet.drains import DrainRegistry
from gateway.fleet.health import HealthChecker
from gateway.fleet.outlier import OutlierDetector
from gateway.fleet.replicas import ReplicaState
from gateway.rollout.controller import Transition
from gateway.rollout.manager import RolloutManager
from gateway.rollout.store import FileRolloutStore, make_store
from gateway.routing.pipeline import Pipeline
from gateway.routing.runtime import Runtime
from gateway.routing.tenants import TenantBook
from gateway.scaling.service import ScaleService
from gateway.scaling.traffic import TrafficStats
from gateway.transport.busypoll import BusyPoller
from gateway.transport.compat.upstream import GrpcForwarder, RestForwarder
from gateway.transport.native_grpc import NativeGrpcForwarder
from gateway.transport.native_rest import NativeRestForwarder

log = logging.getLogger("infergate")


class Gateway:
    def __init__(self, cfg: GatewayConfig, config_path: Path | None = None,
                 reuse_port: bool = False, serve_admin: bool = True,
                 workers_folder: str | None = None) -> None:
        self.config_path = config_path
        self.serve_admin = serve_admin  # with --workers N, only the first worker serves it
        self.file_cfg = cfg  # as read from the file; the Runtime's adds discovered replicas
        # Shared with the other gateways (Redis) or the other workers (a folder): the scale
        # decision, the rollout lease; the workers' metrics always go through their folder.
        self.shared: SharedStore | None = make_shared(cfg.cache.store, workers_folder)
        self.workers_store = FileShared(workers_folder) if workers_folder else None
        self.discovery = DnsDiscovery(cfg.discovery, self._on_discovered)
        self.metrics = Metrics()
        self.metrics.config_ok.set(1)  # the config the process started with is valid
        store = make_store(cfg.cache.store, cfg.state_file)
        if store is None and workers_folder:  # the workers of one node share a state file
            store = FileRolloutStore(Path(workers_folder) / "rollouts.json")
        self.rollouts = RolloutManager(store, on_change=self._on_rollout_change,
                                       metrics=self.metrics, shared=self.shared)
        self.rollouts.configure(cfg.models)
        self.runtime = Runtime(self._effective(cfg), overrides=self._overrides)
        # The native engines speak plain HTTP/1.1 and h2c upstream; TLS to replicas goes through
        # the compat forwarders.
        native = cfg.listen.engine == "native" and cfg.upstream_tls is None
        self.rest_fwd: Forwarder = (NativeRestForwarder() if native
                                    else RestForwarder(cfg.upstream_tls))
        self.grpc_fwd: Forwarder = (
            NativeGrpcForwarder(cfg.limits.max_message_bytes) if native
            else GrpcForwarder(cfg.limits.max_message_bytes, cfg.upstream_tls))
        self.outlier = OutlierDetector(lambda: self.runtime.cfg.outlier,
                                       lambda: self.runtime.replicas, self.metrics)
        self.health = HealthChecker(lambda: self.runtime, self.metrics, self.outlier)
        self.webhooks = Webhooks(lambda: self.runtime.cfg.webhooks, self.health.session)
        self.scale = ScaleService(lambda: self.runtime, self.metrics, self.webhooks.notify,
                                  self.shared)
        self.traffic = TrafficStats()
        self.cost = CostFeed(lambda: self.runtime.cfg, self.metrics,  # GET /api/cost
                             shared=self.shared)
        self.caches = ModelCaches()
        self.caches.sync(cfg)
        self.tenants = TenantBook(self.metrics, cfg.cache.store)
        self.tenants.configure(cfg)
        self.pipeline = Pipeline(lambda: self.runtime, self.metrics, self.health, self.rollouts,
                                 self.caches.get, self.outlier, self._p95_ms,
                                 self._on_upstream_done, self.scale.brownout.level, self.tenants)
        # IngressHost.handle: what an ingress routes a call through, the pipeline's own (no
        # coroutine of the gateway's in between).
        self.handle: Callable[[Call, Forwarder], Coroutine[Any, Any, Answer]] = self.pipeline.handle
        self.observe = Observability(cfg, self.metrics, self.pipeline.dispatcher, workers_folder)
        self.drains = DrainRegistry(cfg.cache.store, lambda: self.runtime.replicas)
        self.listeners = Listeners(reuse_port)
        self.active_calls = 0  # calls an ingress has taken and not yet answered
        self.busy_poller: BusyPoller | None = None  # listen.busy_poll_us, set up at start
        self.draining = False
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.last_reload: dict[str, Any] = {"ok": True, "error": None, "at": time.time()}
        self._config_mtime = _mtime(config_path)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    @property
    def bound(self) -> dict[str, int]:
        return self.listeners.bound

    # ---- IngressHost -------------------------------------------------------------------------

    def call_started(self) -> None:
        """An ingress has taken a call (the count a drain waits for; busy polling starts)."""
        self.active_calls += 1
        if self.busy_poller is not None:
            self.busy_poller.kick()

    def call_finished(self) -> None:
        self.active_calls -= 1

    def observe_call(self, protocol: str, model: str | None, answer: Answer | None, code: str,
                     t0: float, call: Call | None = None) -> None:
        """Completion hook of every answered call (answer None: the gateway answered an error;
        `call` given with a pipeline's answer: who it was for is counted too)."""
        m = self.pipeline.model_label(model)
        version = "" if answer is None or answer.version is None else str(answer.version)
        now = time.monotonic()
        elapsed = now - t0
        mx = self.metrics
        mx.child(mx.requests, protocol, m, version, answer.replica if answer else "", code).inc()
        mx.child(mx.latency, protocol, m).observe(elapsed)
        if m:
            self.cost.answered(m, answer, call)
            ok = answer is not None and answer.ok(protocol)
            self.traffic.observe(m, answer.arm if answer else "", version, ok, elapsed, now)
            if answer is not None and answer.arm:
                self.rollouts.observe(m, answer.arm, ok, elapsed)

    # ---- hooks of the components -------------------------------------------------------------

    def _p95_ms(self, model: str, now: float) -> float | None:
        t = self.traffic.models.get(model)
        return t.latency.p95_ms(now) if t is not None else None

    def _on_upstream_done(self, replica: ReplicaState, seconds: float, now: float) -> None:
        self.metrics.child(self.metrics.upstream_latency, replica.name).observe(seconds)
        self.scale.observe(replica.pool, seconds, now)
        self.cost.upstream(replica, seconds)

    def _overrides(self, model: str) -> tuple[dict[str, float] | None, dict[str, int]]:
        return self.rollouts.weights(model), self.rollouts.label_overrides(model)

    def _on_rollout_change(self, t: Transition) -> None:
        """A rollout stepped, was promoted or rolled back: recompile that model's routing now."""
        rt = self.runtime
        if t.model in rt.cfg.models:
            rt.routers[t.model] = rt.build_router(t.model)
        log.info("rollout %s: %s (step %d, canary weight %.0f%%): %s", t.model, t.kind, t.step,
                 t.weight, t.reason)
        if t.decided:  # one notification per transition for the whole fleet: the decider's
            self.webhooks.notify({"event": "rollout", "model": t.model, **t.to_json()})

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
        old_discovery = self.file_cfg.discovery
        try:
            cfg = load_config(self.config_path)
            check_static(self.file_cfg, cfg)
            self.rollouts.configure(cfg.models)
            self.discovery.configure(cfg.discovery)
            runtime = Runtime(self._effective(cfg), self.runtime, self._overrides)
        except (ConfigError, ValueError) as exc:
            self.discovery.configure(old_discovery)
            msg = str(exc)
            log.error("config reload refused, the old config keeps serving:\n%s", msg)
            self.metrics.reloads.labels("refused").inc()
            self.metrics.config_ok.set(0)
            self.last_reload = {"ok": False, "error": msg, "at": time.time()}
            return False, msg
        await self._swap(runtime)
        self.file_cfg = cfg
        self.caches.sync(cfg)
        self.tenants.configure(cfg)
        self.scale.configure()
        self.pipeline.dispatcher.configure(cfg.retries)
        self.listeners.apply(cfg)
        self.metrics.reloads.labels("applied").inc()
        self.metrics.config_ok.set(1)
        self.last_reload = {"ok": True, "error": None, "at": time.time()}
        log.info("config reloaded from %s", self.config_path)
        spawn(self.health.probe_all(), "probe-after-reload")
        return True, None

    async def _swap(self, runtime: Runtime) -> None:
        """Make `runtime` the one calls use. Replicas the gateway has never seen are probed
        first (bounded by the health timeout), so they serve from the first call after it;
        replicas it no longer lists get no new calls, their calls in flight finish."""
        self.drains.apply(runtime.replicas)
        fresh = [r for r in runtime.replicas.all if not r.ever_up]
        if fresh:
            models = set(runtime.cfg.models) | self.health.discovered
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(self.health.probe_replica(r, models) for r in fresh)),
                    runtime.cfg.health.timeout_s + 0.5)
            except TimeoutError:
                log.warning("new replicas did not all answer their first probe before the swap")
        runtime.replicas.rebuild()
        self.runtime = runtime
        self.cost.configure()  # prices may have changed, replicas come and go

    def _effective(self, cfg: GatewayConfig) -> GatewayConfig:
        """The file's config with the replicas discovery found added to the static ones."""
        found: list[Replica] = self.discovery.replicas() if cfg.discovery else []
        if not found:
            return cfg
        return cfg.model_copy(update={"replicas": [*cfg.replicas, *found]})

    def _on_discovered(self, replicas: list[Replica]) -> None:
        """DNS gave another set of replicas: swap in a Runtime with them (off this call)."""
        spawn(self._apply_discovered(), "discovery-swap")

    async def _apply_discovered(self) -> None:
        async with self._reload_lock:
            before = {r.name for r in self.runtime.replicas.all}
            runtime = Runtime(self._effective(self.file_cfg), self.runtime, self._overrides)
            await self._swap(runtime)
            self.scale.configure()
            after = {r.name for r in runtime.replicas.all}
            if before != after:
                log.info("discovery: replicas added %s, removed %s (drained)",
                         sorted(after - before) or "none", sorted(before - after) or "none")
            for name in before - after:
                # A drain ends with its address: a pod that later gets the same address is a
                # new replica, not a drained one.
                if name in self.drains.names:
                    await self.drains.undrain(name)
            self._publish_discovery()

    def _publish_discovery(self) -> None:
        for s in self.discovery.status():
            self.metrics.discovery_stale.labels(s["name"]).set(1 if s["stale"] else 0)
            self.metrics.discovery_replicas.labels(s["name"]).set(len(s["addresses"]))

    async def _watch_discovery(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._publish_discovery()

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            m = _mtime(self.config_path)
            if m != self._config_mtime:
                self._config_mtime = m
                await self.reload()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        from gateway.app.admin import build_admin_app

        cfg = self.runtime.cfg
        loop = asyncio.get_running_loop()
        admission = self.pipeline.admission
        if cfg.listen.busy_poll_us:
            self.busy_poller = BusyPoller(
                loop, cfg.listen.busy_poll_us / 1e6,
                lambda: self.active_calls > 0 or admission.in_flight > 0)
        await self.drains.start()
        self.drains.apply(self.runtime.replicas)
        if cfg.discovery:
            await self.discovery.start()
            await self._apply_discovered()
            self._tasks.append(spawn(self._watch_discovery(), "discovery-metrics"))
        if self.workers_store is not None:
            self._tasks.append(spawn(publish_worker_metrics(self.workers_store, self.metrics),
                                     "worker-metrics"))
        try:
            await asyncio.wait_for(self.health.probe_all(), cfg.health.timeout_s * 2 + 1)
        except TimeoutError:
            log.warning("first health round did not finish in time; serving anyway")
        await self.rollouts.restore()
        self.runtime.rebuild_routers()
        self._tasks.append(spawn(self.rollouts.run(1.0), "rollouts"))
        self.health.start()
        self._tasks.append(self.scale.start())
        self._tasks.append(self.cost.start())
        self._tasks.extend(self.observe.start())  # payload log writer; spans flushed at close
        await self.listeners.start_rest(cfg, self.observe.ingress(self, "rest", self.rest_fwd))
        await self.listeners.start_grpc(cfg, self.observe.ingress(self, "grpc", self.grpc_fwd))
        if cfg.listen.admin and self.serve_admin:
            await self.listeners.start_admin(cfg.listen.admin, build_admin_app(self))
        if self.config_path is not None:
            self._tasks.append(spawn(self._watch_config(), "config-watch"))
        self.ready_at = time.monotonic()
        log.info("infergate ready in %.2f s: %s", self.ready_at - self.started_at,
                 ", ".join(f"{k}={v}" for k, v in self.bound.items()))

    def ready(self) -> bool:
        return (not self.draining and self.ready_at is not None
                and bool(self.runtime.replicas.routable(time.monotonic())))

    def in_flight(self) -> int:
        """Calls taken by an ingress or out at a replica: what a drain waits for."""
        return max(self.active_calls, 0) + self.pipeline.admission.in_flight

    async def drain_and_stop(self) -> None:
        """Graceful drain: fail readiness, keep serving for the delay, stop taking calls, let
        calls in flight finish, then close."""
        if self.draining:
            return
        self.draining = True
        limits = self.runtime.cfg.limits
        log.info("draining: readiness fails now; serving for %.1f s more, then %d calls in "
                 "flight get %.1f s", limits.drain_delay_s, self.in_flight(), limits.drain_s)
        self.listeners.announce_drain()
        if limits.drain_delay_s > 0:
            await asyncio.sleep(limits.drain_delay_s)
        grpc_stop = self.listeners.stop_accepting(limits.drain_s)
        end = time.monotonic() + limits.drain_s
        while self.in_flight() > 0 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # let the last answers' bytes leave before closing
        if grpc_stop is not None:
            await grpc_stop
        await self.close()

    async def close(self) -> None:
        await cancel_all(self._tasks)
        await self.rollouts.close()
        await self.health.stop()
        await self.drains.close()
        await self.tenants.close()
        await self.discovery.close()
        if self.shared is not None:
            await self.shared.close()
        await self.rest_fwd.close()
        await self.grpc_fwd.close()
        await self.caches.close()
        await self.listeners.close_admin()
        self._stopped.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: spawn(self.reload(), "reload-sighup"))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: spawn(self.drain_and_stop(), "drain"))
        await self._stopped.wait()


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return path.stat().st_mtime
    except OSError:
        return None
