"""Scale signals and decisions for replica pools (HPA-style, pure).

Owns the public surface of the autoscaling logic; the gateway feeds it and publishes its output
(`GET /api/scale`, `infergate_scale_desired_replicas`). Nothing in this package does I/O, reads a
clock or imports anything outside the standard library and `gateway.scaling`.

- `policy`: `PoolScalePolicy`, `Thresholds`, `RatePolicy`, validation, `policy_from_mapping`.
- `hpa`: the Kubernetes HPA v2 arithmetic (proposal, stabilisation, rate policies).
- `controller`: `Signals` -> `ScaleController.evaluate` -> `ScaleDecision`.
- `window`: `SignalWindow`, the request-path aggregator for p95 latency and rps.
"""

from gateway.config.autoscale import (
    DEFAULT_DOWN,
    DEFAULT_UP,
    METRICS,
    PoolScalePolicy,
    RatePolicy,
    Thresholds,
    policy_from_mapping,
    validate_policy,
    validate_rate_policy,
    validate_thresholds,
)
from gateway.scaling.controller import SIGNAL_KEYS, ScaleController, ScaleDecision, Signals
from gateway.scaling.window import SignalWindow

__all__ = [
    "DEFAULT_DOWN",
    "DEFAULT_UP",
    "METRICS",
    "SIGNAL_KEYS",
    "PoolScalePolicy",
    "RatePolicy",
    "ScaleController",
    "ScaleDecision",
    "SignalWindow",
    "Signals",
    "Thresholds",
    "policy_from_mapping",
    "validate_policy",
    "validate_rate_policy",
    "validate_thresholds",
]
