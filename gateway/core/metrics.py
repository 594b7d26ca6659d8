"""Every Prometheus metric of the gateway, defined once, on a registry owned by the app.

Naming: `infergate_` prefix, `_total` / `_seconds` / `_bytes` suffixes. Labels stay
low-cardinality: model names come from config or from replicas that serve them (never from an
unchecked request), and no session or user id is ever a label value.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as _prom_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

_go_float = cast(Callable[[float], str], floatToGoString)  # `le` label text, as prometheus_client

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


# ---- lock-free labelled metrics for the per-call hot path ---------------------------------------
#
# prometheus_client guards every inc()/observe() with a threading.Lock (two for a histogram) and
# re-checks observability on each call. The gateway updates these metrics from its event loop
# only (one thread per process), so plain attribute arithmetic is safe and several times cheaper.
# The exposition is the same as prometheus_client's Counter/Histogram: names, HELP, TYPE, label
# names, sample names and order, cumulative `le` buckets and `_created` series.

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _created_enabled() -> bool:
    # prometheus_client's switch (PROMETHEUS_DISABLE_CREATED_SERIES / disable_created_metrics()).
    return bool(getattr(_prom_metrics, "_use_created", True))


def _check_labelnames(labelnames: Sequence[str], reserved: Sequence[str] = ()) -> tuple[str, ...]:
    names = tuple(labelnames)
    for n in names:
        if not _LABEL_NAME.match(n) or n.startswith("__") or n in reserved:
            raise ValueError(f"Invalid label metric name: {n}")
    return names


class FastCounterChild:
    """One labelled series of a FastCounter. Event-loop thread only."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class FastHistogramChild:
    """One labelled series of a FastHistogram. Event-loop thread only."""

    __slots__ = ("counts", "sum", "created", "_bounds")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds  # finite upper bounds, ascending; counts[-1] is the +Inf bucket
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # `le` buckets: amount == bound belongs to that bound's bucket, hence bisect_left; above
        # the last bound is the +Inf bucket. (A NaN would land in the first bucket, where
        # prometheus_client counts it in none; call durations are never NaN.)
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _FastLabelled:
    """Shared parent: label validation, the series table and registration."""

    _reserved: tuple[str, ...] = ()

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = _check_labelnames(labelnames, self._reserved)
        self._series: dict[tuple[str, ...], Any] = {}  # keyed by the str label values
        if registry is not None:
            registry.register(self)

    def _add(self, values: tuple[object, ...]) -> Any:
        if len(values) != len(self._labelnames):
            raise ValueError("Incorrect label count")
        key = tuple(str(v) for v in values)
        c = self._series.get(key)
        if c is None:
            c = self._series[key] = self._new_child()
        return c

    def _new_child(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _lookup(self, values: tuple[object, ...], kw: dict[str, object]) -> Any:
        """The series for label values given positionally or by name (as `labels()` takes)."""
        if kw:
            if values:
                raise ValueError("Can't pass both *args and **kwargs")
            values = self._labels_kw(kw)
        c = self._series.get(values)  # type: ignore[arg-type]
        return c if c is not None else self._add(values)

    def _labels_kw(self, kw: dict[str, object]) -> tuple[object, ...]:
        if sorted(kw) != sorted(self._labelnames):
            raise ValueError("Incorrect label names")
        return tuple(kw[n] for n in self._labelnames)

    def _family(self) -> Metric:  # pragma: no cover - overridden
        raise NotImplementedError

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:  # pragma: no cover - overridden
        raise NotImplementedError


class FastCounter(_FastLabelled):
    """A labelled Counter without per-call locks; same exposition as prometheus_client.Counter."""

    def _new_child(self) -> FastCounterChild:
        return FastCounterChild()

    def labels(self, *values: object, **kw: object) -> FastCounterChild:
        c: FastCounterChild = self._lookup(values, kw)
        return c

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterable[Metric]:
        fam = self._family()
        created = _created_enabled()
        for values, c in list(self._series.items()):
            fam.add_metric(values, c.value, c.created if created else None)
        return [fam]


class FastHistogram(_FastLabelled):
    """A labelled Histogram without per-call locks; same exposition as
    prometheus_client.Histogram."""

    _reserved = ("le",)

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry | None) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds and bounds[-1] == float("inf"):
            bounds.pop()
        if not bounds:
            raise ValueError("Must have at least two buckets")
        self._bounds = bounds
        self._le = [_go_float(b) for b in bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> FastHistogramChild:
        return FastHistogramChild(self._bounds)

    def labels(self, *values: object, **kw: object) -> FastHistogramChild:
        c: FastHistogramChild = self._lookup(values, kw)
        return c

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterable[Metric]:
        fam = self._family()
        created = _created_enabled()
        le, names, created_name = self._le, self._labelnames, self._name + "_created"
        for values, c in list(self._series.items()):
            acc = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip(le, c.counts, strict=True):
                acc += n
                buckets.append((bound, acc))
            fam.add_metric(values, buckets, c.sum)  # _bucket..., _count, _sum
            if created:  # HistogramMetricFamily has no `created`; same sample as Histogram's
                labels = dict(zip(names, values, strict=True))
                fam.samples.append(Sample(created_name, labels, c.created, None, None))
        return [fam]


class Metrics:
    def __init__(self) -> None:
        # Labelled children of the hot-path metrics, kept so a call pays one dict lookup instead
        # of prometheus_client's labels() validation (bounded: label values are bounded).
        self._children: dict[tuple[Any, ...], Any] = {}
        r = self.registry = CollectorRegistry(auto_describe=True)
        # The four metrics updated on every call are the lock-free kind (see above).
        self.requests = FastCounter(
            "infergate_requests_total", "Calls answered, by model, version, replica and code.",
            ["protocol", "model", "version", "replica", "code"], registry=r)
        self.latency = FastHistogram(
            "infergate_request_duration_seconds", "Gateway-side latency of answered calls.",
            ["protocol", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_latency = FastHistogram(
            "infergate_upstream_duration_seconds", "Latency of calls to replicas.",
            ["replica"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "infergate_replica_in_flight", "Calls sent to a replica and not yet answered.",
            ["replica"], registry=r)
        self.replica_healthy = Gauge(
            "infergate_replica_healthy", "1 while the replica passes health checks.",
            ["replica", "pool"], registry=r)
        self.replica_ejected = Gauge(
            "infergate_replica_ejected", "1 while the replica is ejected as an outlier.",
            ["replica"], registry=r)
        self.replica_gpu_util = Gauge(
            "infergate_replica_gpu_utilization", "Last scraped GPU utilisation 0..1 (-1 unknown).",
            ["replica"], registry=r)
        self.retries = Counter(
            "infergate_retries_total", "Calls retried on another replica.", ["model"], registry=r)
        self.hedges = Counter(
            "infergate_hedges_total", "Second copies sent for slow calls.", ["model"], registry=r)
        self.hedge_wins = Counter(
            "infergate_hedge_wins_total", "Hedged calls answered first by the copy.", ["model"],
            registry=r)
        self.retry_budget_exhausted = Counter(
            "infergate_retry_budget_exhausted_total", "Retries refused by the retry budget.",
            ["model"], registry=r)
        self.shed = Counter(
            "infergate_shed_total", "Calls refused by admission control.", ["reason"], registry=r)
        self.errors = Counter(
            "infergate_gateway_errors_total", "Errors answered by the gateway itself.",
            ["protocol", "kind"], registry=r)
        self.payload_logged = Counter(
            "infergate_payload_log_records_total", "Sampled calls written to the payload log.",
            registry=r)
        self.payload_dropped = Counter(
            "infergate_payload_log_dropped_total",
            "Sampled calls not written: the writer's queue was full (a slow disk) or a write "
            "failed.", registry=r)
        self.sticky_fallback = Counter(
            "infergate_sticky_key_missing_total",
            "Calls to a sticky model that carried no session key (balanced instead).",
            ["model"], registry=r)
        self.split_arm = FastCounter(
            "infergate_split_arm_total", "Calls by chosen split arm.", ["model", "arm"], registry=r)
        self.reloads = Counter(
            "infergate_config_reloads_total", "Config reload attempts by outcome.", ["outcome"],
            registry=r)
        self.config_ok = Gauge(
            "infergate_config_last_reload_ok", "1 if the last reload attempt succeeded.", registry=r)
        self.probe_failures = Counter(
            "infergate_health_probe_failures_total", "Failed health probes.", ["replica"],
            registry=r)
        self.discovery = Counter(
            "infergate_model_discovery_total",
            "First calls for a model name the gateway did not know, by outcome: found (a replica "
            "serves it), absent (none does), cached (absent a moment ago: not probed again), "
            "limited (over health.discovery_per_s: not probed).", ["outcome"], registry=r)
        self.auth_failures = Counter(
            "infergate_auth_failures_total",
            "Calls refused for their key: missing_key, unknown_key, model_not_allowed.",
            ["reason"], registry=r)
        self.tenant_calls = Counter(
            "infergate_tenant_calls_total", "Admitted calls per tenant by outcome (ok, error).",
            ["tenant", "outcome"], registry=r)
        self.tenant_rate_limited = Counter(
            "infergate_tenant_rate_limited_total",
            "Calls refused with 429 / RESOURCE_EXHAUSTED for a tenant's rate or concurrency limit.",
            ["tenant"], registry=r)
        self.tenant_queue_seconds = Histogram(
            "infergate_tenant_queue_seconds",
            "Time a tenant's calls waited in the gateway's queue for a replica slot.",
            ["tenant"], registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.tenant_replica_seconds = Counter(
            "infergate_tenant_replica_seconds_total",
            "Replica time (upstream seconds) used by a tenant's calls.", ["tenant"], registry=r)
        self.tenant_limit_fallbacks = Counter(
            "infergate_tenant_limit_fallbacks_total",
            "Rate-limit decisions taken per gateway because Redis did not answer.", registry=r)
        self.fallbacks = Counter(
            "infergate_fallbacks_total",
            "Calls answered by a lower tier: a fallback target (fallback:N) or a stale cache "
            "entry, by the reason the tier above could not answer.", ["model", "reason", "tier"],
            registry=r)
        self.discovery_stale = Gauge(
            "infergate_discovery_stale",
            "1 while a discovery entry's last DNS answer failed or was empty (the last known "
            "replicas are kept).", ["discovery"], registry=r)
        self.discovery_replicas = Gauge(
            "infergate_discovery_replicas", "Addresses a discovery entry knows.", ["discovery"],
            registry=r)
        self.scrape_failures = Counter(
            "infergate_metrics_scrape_failures_total", "Failed or unparseable metrics scrapes.",
            ["replica"], registry=r)
        self.cache = Counter(
            "infergate_cache_requests_total", "Cache lookups by model and result.",
            ["model", "result"], registry=r)
        self.similarity = Counter(
            "infergate_similarity_requests_total", "Similarity-cache lookups by model and result.",
            ["model", "result"], registry=r)
        self.similarity_verified = Counter(
            "infergate_similarity_verifications_total",
            "Similarity hits re-checked against the model, by outcome.", ["model", "outcome"],
            registry=r)
        self.similarity_false_hit_rate = Gauge(
            "infergate_similarity_false_hit_rate", "Measured false-hit rate of similarity hits.",
            ["model"], registry=r)
        self.similarity_threshold = Gauge(
            "infergate_similarity_threshold", "Current cosine threshold (tightens on false hits).",
            ["model"], registry=r)
        self.scale_desired = Gauge(
            "infergate_scale_desired_replicas", "Desired replicas per pool.", ["pool"], registry=r)
        self.scale_current = Gauge(
            "infergate_scale_current_replicas", "Healthy replicas per pool.", ["pool"], registry=r)
        self.scale_signal = Gauge(
            "infergate_scale_signal", "Current value of each scale signal (NaN when unknown).",
            ["pool", "signal"], registry=r)
        self.scale_direction = Gauge(
            "infergate_scale_direction", "1 for the pool's current direction and the metric that decided it.",
            ["pool", "direction", "metric"], registry=r)
        self.rollout_weight = Gauge(
            "infergate_rollout_canary_weight", "Current canary weight in percent.", ["model"],
            registry=r)
        self.shadow = Counter(
            "infergate_shadow_requests_total", "Mirrored calls by outcome.", ["model", "outcome"],
            registry=r)
        self.cost_per_1k = Gauge(
            "infergate_cost_per_1k_predictions",
            "Cost of 1000 calls answered by a pool's replicas over the last hour (their price "
            "shared among the calls they served; see /api/cost).", ["pool", "model"], registry=r)
        self.cost_last_hour = Gauge(
            "infergate_cost_last_hour",
            "What the calls for a model cost over the last hour (idle replicas not included).",
            ["model"], registry=r)

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, cached (the lock-free kinds look their series up directly)."""
        if isinstance(metric, _FastLabelled):
            c = metric._series.get(values)
            return c if c is not None else metric._add(values)
        key = (id(metric), *values)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*values)
        return c
