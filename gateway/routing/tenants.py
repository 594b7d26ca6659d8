"""Tenants at the door: which tenant a call belongs to, whether it may call that model, and
whether its limits (rate, burst, concurrency) admit it now.

Who a call is: its key (`x-api-key`, or `Authorization: Bearer`) names a tenant; a key of a
model's own `api_keys` is a tenant of its own (`MODEL.api_key`, no limits); a keyless call is
the `anonymous` tenant where one is configured for that model. A model that some tenant lists
(or that has `api_keys`) refuses other calls with UNAUTHENTICATED / 401, and a known key for a
model its tenant does not list gets PERMISSION_DENIED / 403; models no tenant lists stay open.

Rates are GCRA (`core.ratelimit`): with a Redis store, one script call per decision on
Redis' clock, so every gateway shares each tenant's budget; when Redis does not answer, the
local limiter decides (counted in `infergate_tenant_limit_fallbacks_total`) and calls go on.
Failed keys are rate-limited per client address, so guessing keys is slow.

What must always hold: keys are compared as SHA-256 digests and never logged or used as labels
(tenant names are, bounded by the config); a tenant's in-flight count is decremented exactly
once per admitted call; counters of tenants a reload keeps survive it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config import ANONYMOUS, GatewayConfig, Tenant
from gateway.core.call import Call, api_key_of
from gateway.core.errors import PermissionDenied, RateLimited, Unauthenticated
from gateway.core.metrics import Metrics
from gateway.core.ratelimit import GCRA_LUA, Gcra
from gateway.routing.router import ModelRouter

log = logging.getLogger("infergate.tenants")
OPEN = ""  # the tenant of a call to a model no tenant lists
MAX_PEERS = 10_000  # client addresses whose failed keys are remembered (oldest forgotten)


@dataclass
class Usage:
    calls: int = 0
    errors: int = 0
    rate_limited: int = 0
    queue_s: float = 0.0
    replica_s: float = 0.0
    in_flight: int = 0


class TenantBook:
    def __init__(self, metrics: Metrics, store: str = "memory", timeout_s: float = 0.05) -> None:
        self.metrics = metrics
        self.tenants: dict[str, Tenant] = {}
        self.usage: dict[str, Usage] = {}
        self._by_digest: dict[bytes, str] = {}
        self._listed: set[str] = set()
        self._all_listed = False
        self._local = Gcra()
        self._auth = Gcra()
        self._auth_rate = (2.0, 10.0)
        self._redis: aioredis.Redis | None = None
        self._redis_down_until = 0.0
        if store.startswith(("redis://", "rediss://")):
            self._redis = aioredis.from_url(store, socket_timeout=timeout_s,
                                            socket_connect_timeout=timeout_s)

    def configure(self, cfg: GatewayConfig) -> None:
        """Take a config's tenants; usage of tenants it keeps carries on."""
        self.tenants = dict(cfg.tenants)
        self._by_digest = {}
        for name, t in self.tenants.items():
            for k in t.keys:
                digest = (bytes.fromhex(k[7:]) if k.startswith("sha256:")
                          else hashlib.sha256(k.encode()).digest())
                self._by_digest[digest] = name
        listed = [t.models for n, t in self.tenants.items() if n != ANONYMOUS]
        self._all_listed = any(m == "*" for m in listed)
        self._listed = {m for ms in listed if ms != "*" for m in ms}
        self._auth_rate = (cfg.auth.failures_per_s, cfg.auth.burst)
        keep = set(self.tenants) | {n for n in self.usage if n.endswith(".api_key")}
        self.usage = {n: u for n, u in self.usage.items() if n in keep or u.in_flight}
        self._local.forget({f"{n}:{t.limits.rps:g}:{(t.limits.burst or t.limits.rps):g}"
                            for n, t in self.tenants.items() if t.limits.rps is not None})

    @property
    def active(self) -> bool:
        return bool(self.tenants)

    async def admit(self, call: Call, router: ModelRouter, now: float) -> str:
        """The tenant this call counts against (OPEN for open models); raises Unauthenticated,
        PermissionDenied or RateLimited. An admitted tenant's call must be `release`d."""
        model = router.name
        key = api_key_of(call.headers)
        name: str | None = None
        if key is not None:
            name = self._by_digest.get(hashlib.sha256(key.encode()).digest())
            if name is None and router.key_digests and router.authorized(call.headers):
                name = f"{model}.api_key"
            if name is None:
                self._refuse_key(call, now, "unknown_key")
        else:
            anon = self.tenants.get(ANONYMOUS)
            if anon is not None and anon.allows(model):
                name = ANONYMOUS
            elif router.key_digests or self._all_listed or model in self._listed:
                self._refuse_key(call, now, "missing_key")
            else:
                return OPEN
        assert name is not None
        tenant = self.tenants.get(name)
        usage = self.usage.get(name)
        if usage is None:
            usage = self.usage[name] = Usage()
        if tenant is not None:
            if not tenant.allows(model):
                self.metrics.auth_failures.labels("model_not_allowed").inc()
                raise PermissionDenied(f"Tenant {name} may not call model {model}")
            lim = tenant.limits
            if lim.concurrency is not None and usage.in_flight >= lim.concurrency:
                self._limited(name, usage)
                raise RateLimited(f"Tenant {name} is at its limit of {lim.concurrency} calls "
                                  "in flight", 1.0)
            if lim.rps is not None:
                wait = await self._take(name, lim.rps, lim.burst or lim.rps, now)
                if wait > 0:
                    self._limited(name, usage)
                    raise RateLimited(f"Tenant {name} is over its rate of {lim.rps:g} calls/s",
                                      wait)
        usage.in_flight += 1
        usage.calls += 1
        call.tenant = name
        return name

    def release(self, name: str, ok: bool) -> None:
        usage = self.usage.get(name)
        if usage is None:
            return
        usage.in_flight -= 1
        if not ok:
            usage.errors += 1
        self.metrics.tenant_calls.labels(name, "ok" if ok else "error").inc()

    def queued(self, name: str, seconds: float) -> None:
        usage = self.usage.get(name)
        if usage is not None:
            usage.queue_s += seconds
            self.metrics.tenant_queue_seconds.labels(name).observe(seconds)

    def replica_seconds(self, name: str, seconds: float) -> None:
        usage = self.usage.get(name)
        if usage is not None:
            usage.replica_s += seconds
            self.metrics.tenant_replica_seconds.labels(name).inc(seconds)

    def weight(self, name: str) -> float:
        t = self.tenants.get(name)
        return t.weight if t is not None else 1.0

    def priority(self, name: str, headers: Mapping[str, str]) -> str:
        t = self.tenants.get(name)
        return t.priority if t is not None else headers.get("x-priority", "standard")

    def _limited(self, name: str, usage: Usage) -> None:
        usage.rate_limited += 1
        self.metrics.tenant_rate_limited.labels(name).inc()

    def _refuse_key(self, call: Call, now: float, reason: str) -> None:
        self.metrics.auth_failures.labels(reason).inc()
        rate, burst = self._auth_rate
        wait = self._auth.take(call.peer or "?", rate, burst, now)
        if len(self._auth) > MAX_PEERS:  # bounded memory: start afresh
            self._auth = Gcra()
        if wait > 0:
            raise RateLimited("Too many calls with a missing or unknown key from this client", wait)
        raise Unauthenticated("Missing or invalid API key for model "
                              f"{call.model}" if call.model else "Missing or invalid API key")

    async def _take(self, name: str, rate: float, burst: float, now: float) -> float:
        # The limits are part of the key: a reload that changes them starts a fresh budget
        # instead of inheriting a schedule computed at the old rate.
        name = f"{name}:{rate:g}:{burst:g}"
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                allowed, wait = await self._redis.eval(
                    GCRA_LUA, 1, f"infergate:tenant:{name}", repr(1.0 / rate),
                    repr(max(burst, 1.0) / rate))
                return 0.0 if int(allowed) else float(wait)
            except (TimeoutError, RedisError, OSError) as exc:
                self._redis_down_until = time.monotonic() + 1.0
                self.metrics.tenant_limit_fallbacks.inc()
                log.warning("tenant limits: Redis unavailable, limiting per gateway: %s", exc)
        elif self._redis is not None:
            self.metrics.tenant_limit_fallbacks.inc()
        return self._local.take(name, rate, burst, now)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(set(self.tenants) | set(self.usage)):
            t = self.tenants.get(name)
            u = self.usage.get(name, Usage())
            out[name] = {
                "priority": t.priority if t else "standard", "weight": t.weight if t else 1.0,
                "models": (t.models if t else None),
                "limits": t.limits.model_dump() if t else None,
                "calls": u.calls, "errors": u.errors, "rate_limited": u.rate_limited,
                "in_flight": u.in_flight, "queue_s": round(u.queue_s, 6),
                "replica_s": round(u.replica_s, 6)}
        return {"tenants": out, "shared": self._redis is not None}

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
