"""Per-pool autoscaling policy: thresholds, rate policies and their validation.

Owns the frozen description of *how* a pool may scale; it holds no state and does no I/O.
Always true: a `PoolScalePolicy` that exists is valid. Every constructor validates and raises
`ValueError` with the offending key path, so a bad config never reaches the controller.

Defaults are the scaling table of the serving guide this project follows (scale up when p95 latency
> 200 ms, queue depth > 100, GPU > 80 %, CPU > 70 %, rps > 0.8 x capacity; scale down when all of
p95 < 50 ms, queue < 10, GPU < 20 %, CPU < 30 %, rps < 0.3 x capacity), and the rate limits of its
HorizontalPodAutoscaler example (scale up at most 50 % per 60 s after a 60 s stabilisation window,
scale down at most 20 % per 60 s after 300 s). Rate policies use Kubernetes `autoscaling/v2`
`behavior` semantics (type Percent|Pods, periodSeconds, selectPolicy Max|Min|Disabled).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

#: Metric names, in the order reasons and tie-breaks use. These are the threshold keys of the
#: `autoscale.<pool>.up|down` config blocks and the members of `Signals.configured`.
METRICS: tuple[str, ...] = ("p95_latency_ms", "queue_depth", "gpu_util", "cpu_util", "rps_ratio")

#: Metrics that are fractions of a whole and must lie in [0, 1].
_FRACTIONS = frozenset({"gpu_util", "cpu_util"})

RateKind = Literal["percent", "pods"]
SelectPolicy = Literal["max", "min", "disabled"]


def _check_number(path: str, value: object, *, integer: bool = False) -> float:
    """Return `value` as a number or raise a ValueError naming `path`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{path}: expected a finite number, got {value!r}")
    if integer and not float(value).is_integer():
        raise ValueError(f"{path}: expected a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{path}: must not be negative, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """One threshold per metric. Latency in milliseconds, queue depth in pending calls (pool total),
    utilisations as fractions 0..1 (pool average), rps_ratio as rps / pool capacity_rps."""

    p95_latency_ms: float
    queue_depth: float
    gpu_util: float
    cpu_util: float
    rps_ratio: float

    def get(self, metric: str) -> float:
        """The threshold for `metric` (one of METRICS)."""
        value: float = getattr(self, metric)
        return value

    def as_dict(self) -> dict[str, float]:
        return {m: self.get(m) for m in METRICS}


DEFAULT_UP = Thresholds(p95_latency_ms=200.0, queue_depth=100.0, gpu_util=0.8, cpu_util=0.7, rps_ratio=0.8)
DEFAULT_DOWN = Thresholds(p95_latency_ms=50.0, queue_depth=10.0, gpu_util=0.2, cpu_util=0.3, rps_ratio=0.3)


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """A Kubernetes HPA scaling policy: change by at most `value` percent (kind "percent") or
    `value` replicas (kind "pods") within any `period_s` seconds."""

    kind: RateKind
    value: float
    period_s: float

    def __post_init__(self) -> None:
        validate_rate_policy(self)

    def describe(self) -> str:
        unit = "%" if self.kind == "percent" else " replicas"
        return f"{self.value:g}{unit}/{self.period_s:g}s"


@dataclass(frozen=True, slots=True)
class PoolScalePolicy:
    """Everything that decides one pool's replica count. Validated on construction."""

    min_replicas: int = 2
    max_replicas: int = 20
    up: Thresholds = DEFAULT_UP
    down: Thresholds = DEFAULT_DOWN
    window_up_s: float = 60.0
    window_down_s: float = 300.0
    up_policies: tuple[RatePolicy, ...] = field(
        default_factory=lambda: (RatePolicy("percent", 50.0, 60.0),)
    )
    down_policies: tuple[RatePolicy, ...] = field(
        default_factory=lambda: (RatePolicy("percent", 20.0, 60.0),)
    )
    select_up: SelectPolicy = "max"
    select_down: SelectPolicy = "max"
    tolerance: float = 0.1
    #: None disables scale-to-zero. Otherwise: after this many seconds with no traffic (rps 0, queue 0)
    #: and every known signal below its down threshold, the pool goes to 0; the first request
    #: afterwards brings it back to max(1, min_replicas) at once (KEDA's activation semantics).
    scale_to_zero_after_s: float | None = None

    def __post_init__(self) -> None:
        validate_policy(self)


def validate_thresholds(up: Thresholds, down: Thresholds, path: str = "") -> None:
    """Raise ValueError unless every threshold is a non-negative number, every up threshold is
    positive (it is the HPA target, a divisor), fractions stay within [0, 1] and every down
    threshold lies strictly below its up threshold (otherwise up and down would fight)."""
    prefix = f"{path}." if path else ""
    for side, th in (("up", up), ("down", down)):
        for metric in METRICS:
            value = _check_number(f"{prefix}{side}.{metric}", th.get(metric))
            if metric in _FRACTIONS and value > 1.0:
                raise ValueError(
                    f"{prefix}{side}.{metric}: is a fraction of 1, got {value:g} (write 0.8 for 80%)"
                )
    for metric in METRICS:
        if up.get(metric) <= 0:
            raise ValueError(f"{prefix}up.{metric}: must be above 0, got {up.get(metric):g}")
        if down.get(metric) >= up.get(metric):
            raise ValueError(
                f"{prefix}down.{metric}: {down.get(metric):g} must be below "
                f"up.{metric} {up.get(metric):g}"
            )


def validate_rate_policy(policy: RatePolicy, path: str = "") -> None:
    """Raise ValueError unless the policy has a known kind and a positive value and period."""
    prefix = f"{path}." if path else ""
    if policy.kind not in ("percent", "pods"):
        raise ValueError(f"{prefix}kind: must be 'percent' or 'pods', got {policy.kind!r}")
    value = _check_number(f"{prefix}{policy.kind}", policy.value, integer=policy.kind == "pods")
    if value <= 0:
        raise ValueError(f"{prefix}{policy.kind}: must be above 0, got {value:g}")
    period = _check_number(f"{prefix}period_s", policy.period_s)
    if period <= 0:
        raise ValueError(f"{prefix}period_s: must be above 0, got {period:g}")


def validate_policy(policy: PoolScalePolicy, path: str = "") -> None:
    """Raise ValueError naming the key path for any contradiction in `policy`."""
    prefix = f"{path}." if path else ""
    for name in ("min_replicas", "max_replicas"):
        _check_number(f"{prefix}{name}", getattr(policy, name), integer=True)
    if policy.max_replicas < 1:
        raise ValueError(f"{prefix}max_replicas: must be at least 1, got {policy.max_replicas}")
    if policy.min_replicas > policy.max_replicas:
        raise ValueError(
            f"{prefix}min_replicas: {policy.min_replicas} is above max_replicas {policy.max_replicas}"
        )
    if policy.min_replicas == 0 and policy.scale_to_zero_after_s is None:
        raise ValueError(
            f"{prefix}min_replicas: 0 needs scale_to_zero_after_s (how long a pool must be idle "
            "before it goes to zero)"
        )
    validate_thresholds(policy.up, policy.down, path)
    _check_number(f"{prefix}window_up_s", policy.window_up_s)
    _check_number(f"{prefix}window_down_s", policy.window_down_s)
    tol = _check_number(f"{prefix}tolerance", policy.tolerance)
    if tol >= 1.0:
        raise ValueError(f"{prefix}tolerance: must be below 1, got {tol:g}")
    if policy.scale_to_zero_after_s is not None:
        idle = _check_number(f"{prefix}scale_to_zero_after_s", policy.scale_to_zero_after_s)
        if idle <= 0:
            raise ValueError(f"{prefix}scale_to_zero_after_s: must be above 0, got {idle:g}")
    for side in ("up", "down"):
        select = getattr(policy, f"select_{side}")
        if select not in ("max", "min", "disabled"):
            raise ValueError(f"{prefix}select_{side}: must be max, min or disabled, got {select!r}")
        rules: tuple[RatePolicy, ...] = getattr(policy, f"{side}_policies")
        if not rules and select != "disabled":
            raise ValueError(
                f"{prefix}{side}_policies: needs at least one policy unless select_{side} is disabled"
            )
        for i, rule in enumerate(rules):
            validate_rate_policy(rule, f"{prefix}{side}_policies[{i}]")


def _thresholds_from(raw: object, default: Thresholds, path: str) -> Thresholds:
    if raw is None:
        return default
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping of metric thresholds, got {raw!r}")
    unknown = sorted(set(raw) - set(METRICS))
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown metric (known: {', '.join(METRICS)})")
    values = default.as_dict()
    for metric, value in raw.items():
        if value is not None:  # null keeps the default, as an absent key does
            values[metric] = _check_number(f"{path}.{metric}", value)
    return Thresholds(**values)


def _rates_from(raw: object, path: str) -> tuple[RatePolicy, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a list like [{{percent: 50, period_s: 60}}], got {raw!r}")
    out: list[RatePolicy] = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"percent", "pods", "period_s"}:
            raise ValueError(f"{where}: expected {{percent: N, period_s: S}} or {{pods: N, period_s: S}}")
        kinds = [k for k in ("percent", "pods") if k in item]
        if len(kinds) != 1:
            raise ValueError(f"{where}: give exactly one of percent or pods")
        if "period_s" not in item:
            raise ValueError(f"{where}.period_s: missing")
        kind: RateKind = "percent" if kinds[0] == "percent" else "pods"
        value = _check_number(f"{where}.{kind}", item[kind], integer=kind == "pods")
        period = _check_number(f"{where}.period_s", item["period_s"])
        try:
            out.append(RatePolicy(kind, value, period))
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None
    return tuple(out)


def policy_from_mapping(raw: Mapping[str, Any], path: str = "autoscale") -> PoolScalePolicy:
    """Build a policy from one `autoscale.<pool>` config block (already parsed YAML).

    Keys (all optional): min_replicas, max_replicas, up, down, window_up_s, window_down_s,
    tolerance, scale_to_zero_after_s, up_policies, down_policies, select_up, select_down.
    Keys and thresholds that are absent or null keep the defaults. Raises ValueError prefixed with
    `path`.
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping, got {raw!r}")
    raw = {k: v for k, v in raw.items() if v is not None}
    known = {f.name for f in fields(PoolScalePolicy)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for name in ("min_replicas", "max_replicas"):
        if name in raw:
            kwargs[name] = int(_check_number(f"{path}.{name}", raw[name], integer=True))
    for name in ("window_up_s", "window_down_s", "tolerance"):
        if name in raw:
            kwargs[name] = _check_number(f"{path}.{name}", raw[name])
    if "scale_to_zero_after_s" in raw:
        kwargs["scale_to_zero_after_s"] = _check_number(
            f"{path}.scale_to_zero_after_s", raw["scale_to_zero_after_s"]
        )
    kwargs["up"] = _thresholds_from(raw.get("up"), DEFAULT_UP, f"{path}.up")
    kwargs["down"] = _thresholds_from(raw.get("down"), DEFAULT_DOWN, f"{path}.down")
    for side in ("up", "down"):
        if f"{side}_policies" in raw:
            kwargs[f"{side}_policies"] = _rates_from(raw[f"{side}_policies"], f"{path}.{side}_policies")
        if f"select_{side}" in raw:
            kwargs[f"select_{side}"] = raw[f"select_{side}"]
    try:
        return PoolScalePolicy(**kwargs)
    except ValueError as exc:
        # Validators name keys relative to the pool block; prefix the block's own path.
        raise ValueError(f"{path}.{exc}") from None
