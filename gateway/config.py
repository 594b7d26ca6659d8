"""The gateway's configuration: YAML in, a frozen and validated model out.

What must always hold: a `GatewayConfig` that exists is valid as a whole (cross references
resolved: labels, pools, policy names), and it is never mutated; a reload builds a new one and
swaps it in (DESIGN.md, principle 4). `load_config` reports every problem as
"FILE: key.path: reason".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, key path and reason."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_hostport(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {v!r}")
    return v


class Tls(_Frozen):
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


class UpstreamTls(_Frozen):
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


class Listen(_Frozen):
    rest: str | None = "0.0.0.0:8501"
    grpc: str | None = "0.0.0.0:8500"
    admin: str | None = "127.0.0.1:9901"
    tls: Tls | None = None  # TLS on the REST and gRPC listeners (admin stays plain on loopback)
    # Data-path engine: "native" (own HTTP/1.1 and HTTP/2 layers, gateway.fastrest and
    # gateway.http2) or "compat" (aiohttp and grpc.aio). docs/benchmarks.md compares them.
    engine: Literal["native", "compat"] = "native"
    # Keep the event loop polling instead of sleeping while calls are in flight and for this
    # many microseconds after the last one (0: off). Lowers latency on virtual machines, where
    # waking a sleeping process is slow, at the price of a busy core (gateway/busypoll.py).
    busy_poll_us: int = Field(default=0, ge=0, le=10_000_000)

    @field_validator("rest", "grpc", "admin")
    @classmethod
    def _hp(cls, v: str | None) -> str | None:
        return None if v in (None, "") else _check_hostport(v)


class Replica(_Frozen):
    name: str = Field(min_length=1)
    rest: str | None = None
    grpc: str | None = None
    metrics: str | None = None
    pool: str = "default"
    capacity_rps: float | None = Field(default=None, gt=0)
    weight: float = Field(default=1.0, gt=0)

    @field_validator("rest", "grpc")
    @classmethod
    def _hp(cls, v: str | None) -> str | None:
        return None if v is None else _check_hostport(v)

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


class HeaderMatch(_Frozen):
    exact: str | None = None
    regex: str | None = None
    present: bool | None = None

    @field_validator("regex")
    @classmethod
    def _re(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regex {v!r}: {exc}") from exc
        return v


Method = Literal["predict", "classify", "regress", "multi_inference", "metadata", "status"]


class Match(_Frozen):
    headers: dict[str, str | HeaderMatch] = {}
    methods: list[Method] | None = None
    protocols: list[Literal["rest", "grpc"]] | None = None


TARGET_RE = re.compile(r"^(version:\d+|pool:[\w.-]+|[\w.-]+)$")


class Route(_Frozen):
    match: Match | None = None
    split: dict[str, float]
    bucket_by: str | None = None

    @field_validator("split")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("split needs at least one target")
        for target, w in v.items():
            if not TARGET_RE.match(target):
                raise ValueError(f"target {target!r} is not a label, 'version:N' or 'pool:NAME'")
            if w < 0:
                raise ValueError(f"weight of {target!r} is negative ({w})")
        if sum(v.values()) <= 0:
            raise ValueError("weights must sum to a positive number")
        return v


class Sticky(_Frozen):
    header: str | None = None
    cookie: str | None = None
    load_factor: float = Field(default=1.25, gt=1.0)

    @model_validator(mode="after")
    def _some_key(self) -> Sticky:
        if not self.header and not self.cookie:
            raise ValueError("sticky needs a header or a cookie to take the key from")
        return self


class ExactCache(_Frozen):
    ttl_s: float = Field(default=60.0, gt=0)
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, gt=0)


class SimilarityCache(_Frozen):
    input: str | None = None
    threshold: float = Field(default=0.98, gt=0, lt=1)
    max_entries: int = Field(default=10000, gt=0)
    verify_fraction: float = Field(default=0.05, ge=0, le=1)
    target_false_hit_rate: float = Field(default=0.01, ge=0, le=1)


class ModelCache(_Frozen):
    exact: ExactCache | None = None
    similarity: SimilarityCache | None = None


class Shadow(_Frozen):
    target: str
    percent: float = Field(ge=0, le=100)


class Rollout(_Frozen):
    canary: str
    stable: str = "stable"
    steps: list[float] = [5, 25, 50, 100]
    step_s: float = Field(default=60, gt=0)
    min_requests: int = Field(default=100, ge=0)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p95_ratio: float = Field(default=1.2, gt=0)
    min_agreement: float = Field(default=0.99, ge=0, le=1)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[float]) -> list[float]:
        if not v or any(s <= 0 or s > 100 for s in v) or v != sorted(v):
            raise ValueError("steps must be increasing percentages in (0, 100]")
        return v


class Hedge(_Frozen):
    delay_ms: float | None = Field(default=None, gt=0)  # None: the model's observed p95
    fallback_ms: float = Field(default=50.0, gt=0)  # delay while no p95 has been observed
    budget_ratio: float = Field(default=0.05, ge=0, le=1)


class ModelConfig(_Frozen):
    labels: dict[str, int] = {}
    routes: list[Route] = []
    sticky: Sticky | None = None
    balance: str = "round_robin"
    cache: ModelCache | None = None
    shadow: Shadow | None = None
    rollout: Rollout | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    hedge: Hedge | None = None
    api_keys: list[str] = []

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for k in v:
            if k.startswith("sha256:"):
                if not re.fullmatch(r"sha256:[0-9a-f]{64}", k):
                    raise ValueError("an api key 'sha256:...' needs 64 lower-case hex digits")
            elif len(k) < 16:
                raise ValueError("an api key needs at least 16 characters (or give 'sha256:<hex>')")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, int]) -> dict[str, int]:
        for label, version in v.items():
            if not re.fullmatch(r"[\w.-]+", label):
                raise ValueError(f"label {label!r} may hold only letters, digits, '_', '-', '.'")
            if version < 0:
                raise ValueError(f"label {label!r} points at a negative version")
        return v


class Health(_Frozen):
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=3, ge=1)
    metrics_interval_s: float = Field(default=2.0, gt=0)
    metrics_stale_s: float = Field(default=10.0, gt=0)


class Limits(_Frozen):
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_message_bytes: int = Field(default=2**31 - 1, gt=0)
    max_in_flight_per_replica: int = Field(default=256, gt=0)
    max_queue: int = Field(default=1024, ge=0)
    drain_s: float = Field(default=20.0, ge=0)


class Retries(_Frozen):
    max_attempts: int = Field(default=3, ge=1)
    per_try_timeout_s: float | None = Field(default=None, gt=0)
    budget_ratio: float = Field(default=0.2, ge=0, le=1)
    min_per_s: float = Field(default=10.0, ge=0)


class CacheStore(_Frozen):
    store: str = "memory"

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if v != "memory" and not re.match(r"^rediss?://", v):
            raise ValueError("store must be 'memory' or a redis:// URL")
        return v


class Thresholds(_Frozen):
    p95_latency_ms: float | None = None
    queue_depth: float | None = None
    gpu_util: float | None = None
    cpu_util: float | None = None
    rps_ratio: float | None = None


class Autoscale(_Frozen):
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


class Webhook(_Frozen):
    url: str
    timeout_s: float = Field(default=2.0, gt=0)


class GatewayConfig(_Frozen):
    listen: Listen = Listen()
    replicas: list[Replica] = []
    cache: CacheStore = CacheStore()
    models: dict[str, ModelConfig] = {}
    health: Health = Health()
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
        pools = {r.pool for r in self.replicas}
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
            for path, t in targets:
                if t.startswith("pool:") and t[5:] not in pools:
                    raise ValueError(f"{path}: unknown pool {t[5:]!r} (pools: {sorted(pools)})")
                if not t.startswith(("pool:", "version:")) and t not in m.labels:
                    raise ValueError(f"{path}: unknown label {t!r} (labels: {sorted(m.labels)})")
        from gateway.scaling import policy_from_mapping

        for pool, auto in self.autoscale.items():
            if pool not in pools:
                raise ValueError(f"autoscale.{pool}: unknown pool (pools: {sorted(pools)})")
            policy_from_mapping(auto.model_dump(), f"autoscale.{pool}")
        return self


def _loopback(hostport: str) -> bool:
    host = hostport.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate already-parsed YAML data."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            loc = _loc(err["loc"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            # Cross-reference errors (raised for the whole file) already name their key path.
            lines.append(f"{source}: {loc}: {msg}" if err["loc"] else f"{source}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a YAML config file. Raises ConfigError naming file, key path, reason."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(parse)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: {where}: invalid YAML: {problem}") from None
    return parse_config(data, str(p))


def json_schema() -> dict[str, Any]:
    return GatewayConfig.model_json_schema()
