"""The gateway's configuration: YAML in, a frozen and validated model out.

- `schema`: the whole file as a frozen pydantic model (`GatewayConfig`), cross-checked;
- `models`: one model's section (labels, routes, caches, rollout, ...); `base`: shared parts;
- `autoscale`: the per-pool scale policy (thresholds, windows, rate policies) and its validation;
- `loading`: file -> `GatewayConfig`, errors as "FILE: key.path: reason".

What must always hold: this package imports nothing of the gateway but `gateway.core` and
`policies` (for the names of registered balancers); every other package reads settings from a
`GatewayConfig` it is handed, never from the file or the environment.
"""

from gateway.config.base import ConfigError
from gateway.config.discovery import Discovery
from gateway.config.loading import json_schema, load_config, parse_config
from gateway.config.models import (
    Brownout,
    ExactCache,
    Fallback,
    HeaderMatch,
    Hedge,
    Match,
    ModelCache,
    ModelConfig,
    Rollout,
    Route,
    Shadow,
    SimilarityCache,
    Sticky,
)
from gateway.config.observe import PayloadLog, Tracing
from gateway.config.schema import (
    Autoscale,
    CacheStore,
    GatewayConfig,
    Health,
    Limits,
    Listen,
    Outlier,
    Pool,
    Replica,
    Retries,
    Thresholds,
    Tls,
    UpstreamTls,
    Webhook,
)
from gateway.config.tenants import ANONYMOUS, Auth, Tenant, TenantLimits

__all__ = [
    "ANONYMOUS",
    "Auth",
    "Tenant",
    "TenantLimits",
    "Brownout",
    "Fallback",
    "Pool",
    "Autoscale",
    "CacheStore",
    "ConfigError",
    "Discovery",
    "ExactCache",
    "GatewayConfig",
    "HeaderMatch",
    "Health",
    "Hedge",
    "Limits",
    "Listen",
    "Match",
    "Outlier",
    "PayloadLog",
    "ModelCache",
    "ModelConfig",
    "Replica",
    "Retries",
    "Rollout",
    "Route",
    "Shadow",
    "SimilarityCache",
    "Sticky",
    "Thresholds",
    "Tls",
    "Tracing",
    "UpstreamTls",
    "Webhook",
    "json_schema",
    "load_config",
    "parse_config",
]
