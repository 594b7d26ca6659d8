"""The configuration model: every key of the YAML file as a frozen, validated pydantic model.

What must always hold: a `GatewayConfig` that exists is valid as a whole (cross references
resolved: labels, pools, policy names, autoscale blocks), and it is never mutated; a reload
builds a new one and swaps it in (DESIGN.md, principle 4).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.autoscale import policy_from_mapping
from gateway.config.base import Frozen, check_hostport
from gateway.config.discovery import Discovery
from gateway.config.models import ModelConfig
from gateway.config.observe import PayloadLog, Tracing
from gateway.config.tenants import ANONYMOUS, Auth, Tenant


class Tls(Frozen):
    cert: str  # PEM certificate chain
    key: str  # PEM private key
    client_ca: str | None = None  # PEM CA bundle: when set, clients must present a certificate

    @model_validator(mode="after")
    def _files(self) -> Tls:
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self


class UpstreamTls(Frozen):
    """TLS (and mTLS with cert + key) from the gateway to every replica's gRPC port (TF Serving's
    --ssl_config_file), and to its REST port too with `rest: true` (TF Serving's REST API has no
    TLS of its own; use that with a TLS-terminating sidecar)."""

    rest: bool = False
    ca: str | None = None  # PEM CA bundle that signed the replicas' certificates (None: system)
    cert: str | None = None  # client certificate for mTLS
    key: str | None = None
    server_name: str | None = None  # name to verify instead of the replica's host

    @model_validator(mode="after")
    def _files(self) -> UpstreamTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together (mTLS)")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self


class Listen(Frozen):
    rest: str | None = "0.0.0.0:8501"
    grpc: str | None = "0.0.0.0:8500"
    admin: str | None = "127.0.0.1:9901"
    tls: Tls | None = None  # TLS on the REST and gRPC listeners (admin stays plain on loopback)
    # Data-path engine: "native" (own HTTP/1.1 and HTTP/2 layers, gateway.transport.native_rest and
    # gateway.transport.native_grpc) or "compat" (aiohttp and grpc.aio). docs/benchmarks.md compares them.
    engine: Literal["native", "compat"] = "native"
    # Keep the event loop polling instead of sleeping while calls are in flight and for this
    # many microseconds after the last one (0: off). Lowers latency on virtual machines, where
    # waking a sleeping process is slow, at the price of a busy core (gateway/busypoll.py).
    busy_poll_us: int = Field(default=0, ge=0, le=10_000_000)

    @field_validator("rest", "grpc", "admin")
    @classmethod
    def _hp(cls, v: str | None) -> str | None:
        return None if v in (None, "") else check_hostport(v)


class Replica(Frozen):
    name: str = Field(min_length=1)
    rest: str | None = None
    grpc: str | None = None
    metrics: str | None = None
    pool: str = "default"
    capacity_rps: float | None = Field(default=None, gt=0)
    weight: float = Field(default=1.0, gt=0)
    cost_per_hour: float | None = Field(default=None, ge=0)  # overrides its pool's (e.g. spot)

    @field_validator("rest", "grpc")
    @classmethod
    def _hp(cls, v: str | None) -> str | None:
        return None if v is None else check_hostport(v)

    @field_validator("metrics")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"https?://[^/\s]+", v):
            raise ValueError(f"expected an http(s) URL, got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_address(self) -> Replica:
        if self.rest is None and self.grpc is None:
            raise ValueError("a replica needs a rest or a grpc address (or both)")
        return self


class Pool(Frozen):
    """Facts about a pool of replicas as a whole."""

    cost_per_hour: float | None = Field(default=None, ge=0)  # per replica, in any currency


class Health(Frozen):
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=3, ge=1)
    metrics_interval_s: float = Field(default=2.0, gt=0)
    metrics_stale_s: float = Field(default=10.0, gt=0)
    # First calls for model names the gateway has not seen probe every replica; these bound it
    # (a flood of random names must not multiply onto the fleet or grow state).
    discovery_per_s: float = Field(default=20.0, gt=0)  # names probed per second, fleet-wide
    unknown_model_ttl_s: float = Field(default=10.0, ge=0)  # an absent name is not re-probed


class Outlier(Frozen):
    """Passive health (Envoy's outlier detection, HAProxy's `observe layer4`)."""

    consecutive_errors: int = Field(default=5, ge=1)  # 5xx / UNAVAILABLE in a row -> eject
    base_ejection_s: float = Field(default=30.0, gt=0)  # x the number of ejections so far
    max_ejection_s: float = Field(default=300.0, gt=0)
    max_ejected_percent: float = Field(default=50.0, ge=0, le=100)  # of a pool, refused ones aside
    uneject_on_probe: bool = True  # a passing active health check lifts an ejection (Envoy's default)


class Limits(Frozen):
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_message_bytes: int = Field(default=2**31 - 1, gt=0)
    max_in_flight_per_replica: int = Field(default=256, gt=0)
    max_queue: int = Field(default=1024, ge=0)
    drain_s: float = Field(default=20.0, ge=0)  # in-flight calls finish within this
    # SIGTERM: readiness fails at once, listeners keep serving this long (endpoint removal
    # reaches clients and kube-proxy seconds later), then close.
    drain_delay_s: float = Field(default=0.0, ge=0)


class Retries(Frozen):
    max_attempts: int = Field(default=3, ge=1)
    per_try_timeout_s: float | None = Field(default=None, gt=0)
    budget_ratio: float = Field(default=0.2, ge=0, le=1)
    min_per_s: float = Field(default=10.0, ge=0)


class CacheStore(Frozen):
    store: str = "memory"

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if v != "memory" and not re.match(r"^rediss?://", v):
            raise ValueError("store must be 'memory' or a redis:// URL")
        return v


class Thresholds(Frozen):
    p95_latency_ms: float | None = None
    queue_depth: float | None = None
    gpu_util: float | None = None
    cpu_util: float | None = None
    rps_ratio: float | None = None


class Autoscale(Frozen):
    min_replicas: int = Field(default=2, ge=0)
    max_replicas: int = Field(default=20, ge=1)
    up: Thresholds = Thresholds(
        p95_latency_ms=200, queue_depth=100, gpu_util=0.8, cpu_util=0.7, rps_ratio=0.8
    )
    down: Thresholds = Thresholds(
        p95_latency_ms=50, queue_depth=10, gpu_util=0.2, cpu_util=0.3, rps_ratio=0.3
    )
    window_up_s: float = Field(default=60, ge=0)
    window_down_s: float = Field(default=300, ge=0)
    scale_to_zero_after_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Autoscale:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        for key in Thresholds.model_fields:
            up, down = getattr(self.up, key), getattr(self.down, key)
            if up is not None and down is not None and down >= up:
                raise ValueError(f"down.{key} ({down}) must be below up.{key} ({up})")
        return self


class Webhook(Frozen):
    url: str
    timeout_s: float = Field(default=2.0, gt=0)


class GatewayConfig(Frozen):
    listen: Listen = Listen()
    replicas: list[Replica] = []
    discovery: list[Discovery] = []  # replicas found through DNS, beside the static ones
    pools: dict[str, Pool] = {}  # per-pool facts (cost); pools are named by replicas
    tenants: dict[str, Tenant] = {}  # API keys with models, priority, limits and weights
    auth: Auth = Auth()
    cache: CacheStore = CacheStore()
    models: dict[str, ModelConfig] = {}
    health: Health = Health()
    outlier: Outlier = Outlier()
    limits: Limits = Limits()
    retries: Retries = Retries()
    autoscale: dict[str, Autoscale] = {}
    webhooks: list[Webhook] = []
    state_file: str | None = None
    default_balance: str = "round_robin"
    scale_eval_s: float = Field(default=5.0, gt=0)
    upstream_tls: UpstreamTls | None = None
    admin_token: str | None = Field(default=None, min_length=16)
    admin_token_file: str | None = None
    tracing: Tracing | None = None  # OpenTelemetry spans to an OTLP receiver (config/observe.py)
    payload_log: PayloadLog | None = None  # sampled calls with their bodies, for replay

    def admin_secret(self) -> str | None:
        """The admin bearer token (inline or read from a file, e.g. a Kubernetes secret)."""
        if self.admin_token_file:
            return Path(self.admin_token_file).read_text(encoding="utf-8").strip()
        return self.admin_token

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        from policies.registry import balancer_names

        if self.listen.admin and not _loopback(self.listen.admin) and not (
                self.admin_token or self.admin_token_file):
            raise ValueError("listen.admin: an admin address beyond loopback needs admin_token or "
                             "admin_token_file")
        if self.admin_token_file:
            try:
                secret = Path(self.admin_token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"admin_token_file: cannot read {self.admin_token_file}: "
                                 f"{exc.strerror}") from None
            if len(secret) < 16:
                raise ValueError("admin_token_file: the token must hold at least 16 characters")
        names = [r.name for r in self.replicas]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"replica names must be unique; repeated: {sorted(dupes)}")
        pools = {r.pool for r in self.replicas} | {d.pool for d in self.discovery}
        found = [d.name for d in self.discovery]
        if len(set(found)) != len(found):
            raise ValueError(f"discovery names must be unique; repeated: "
                             f"{sorted({n for n in found if found.count(n) > 1})}")
        for r in self.replicas:
            for d in self.discovery:
                if r.name.startswith(d.name + "-"):
                    raise ValueError(f"replicas: {r.name!r} could clash with the names discovery "
                                     f"{d.name!r} gives ({d.name}-ADDRESS)")
        known = set(balancer_names())
        if self.default_balance not in known:
            raise ValueError(f"default_balance {self.default_balance!r} is not one of {sorted(known)}")
        for mname, m in self.models.items():
            where = f"models.{mname}"
            if m.balance not in known:
                raise ValueError(f"{where}.balance: {m.balance!r} is not one of {sorted(known)}")
            targets: list[tuple[str, str]] = []
            for i, route in enumerate(m.routes):
                targets += [(f"{where}.routes.{i}.split", t) for t in route.split]
            if m.shadow:
                targets.append((f"{where}.shadow.target", m.shadow.target))
            if m.rollout:
                targets.append((f"{where}.rollout.canary", m.rollout.canary))
                targets.append((f"{where}.rollout.stable", m.rollout.stable))
            targets += [(f"{where}.fallback.{i}.target", fb.target)
                        for i, fb in enumerate(m.fallback)]
            for path, t in targets:
                if t.startswith("pool:") and t[5:] not in pools:
                    raise ValueError(f"{path}: unknown pool {t[5:]!r} (pools: {sorted(pools)})")
                if not t.startswith(("pool:", "version:")) and t not in m.labels:
                    raise ValueError(f"{path}: unknown label {t!r} (labels: {sorted(m.labels)})")
        seen: dict[str, str] = {}
        for tname, tenant in self.tenants.items():
            if not re.fullmatch(r"[\w.-]+", tname):
                raise ValueError(f"tenants.{tname}: a name may hold only letters, digits, '_-.'")
            if tname == ANONYMOUS and tenant.keys:
                raise ValueError("tenants.anonymous: admits keyless calls, it has no keys")
            for k in tenant.keys:
                if k in seen:
                    raise ValueError(f"tenants.{tname}.keys: a key of tenant {seen[k]} too")
                seen[k] = tname
        for pool in self.pools:
            if pool not in pools:
                raise ValueError(f"pools.{pool}: no replica is in this pool (pools: {sorted(pools)})")
        for pool, auto in self.autoscale.items():
            if pool not in pools:
                raise ValueError(f"autoscale.{pool}: unknown pool (pools: {sorted(pools)})")
            policy_from_mapping(auto.model_dump(), f"autoscale.{pool}")
        return self


def _loopback(hostport: str) -> bool:
    host = hostport.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")
