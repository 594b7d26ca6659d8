"""Every Prometheus metric of the gateway, defined once, on a registry owned by the app.

Naming: `infergate_` prefix, `_total` / `_seconds` / `_bytes` suffixes. Labels stay
low-cardinality: model names come from config or from replicas that serve them (never from an
unchecked request), and no session or user id is ever a label value.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        # Labelled children of the hot-path metrics, kept so a call pays one dict lookup instead
        # of prometheus_client's labels() validation (bounded: label values are bounded).
        self._children: dict[tuple[Any, ...], Any] = {}
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "infergate_requests_total", "Calls answered, by model, version, replica and code.",
            ["protocol", "model", "version", "replica", "code"], registry=r)
        self.latency = Histogram(
            "infergate_request_duration_seconds", "Gateway-side latency of answered calls.",
            ["protocol", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_latency = Histogram(
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
        self.sticky_fallback = Counter(
            "infergate_sticky_key_missing_total",
            "Calls to a sticky model that carried no session key (balanced instead).",
            ["model"], registry=r)
        self.split_arm = Counter(
            "infergate_split_arm_total", "Calls by chosen split arm.", ["model", "arm"], registry=r)
        self.reloads = Counter(
            "infergate_config_reloads_total", "Config reload attempts by outcome.", ["outcome"],
            registry=r)
        self.config_ok = Gauge(
            "infergate_config_last_reload_ok", "1 if the last reload attempt succeeded.", registry=r)
        self.probe_failures = Counter(
            "infergate_health_probe_failures_total", "Failed health probes.", ["replica"],
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

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, cached."""
        key = (id(metric), *values)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*values)
        return c
