"""`/metrics` of a `--workers N` gateway as one gateway: every worker publishes its Prometheus
text to the workers' shared store each second; the worker serving the admin API merges them.

Merging follows Prometheus' multiprocess mode: counters, histograms and summaries add up per
series (same name, same labels); gauges take the largest value (the replica, rollout and scale
gauges are the same facts seen by every worker, and a maximum never invents load).

What must always hold: the merged exposition parses as Prometheus text, holds every series any
live worker has, and a worker that stopped publishing drops out within the store's max age.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.core.metrics import Metrics
from gateway.core.shared import SharedStore

_ADDITIVE = frozenset({"counter", "histogram", "summary", "untyped", "unknown", "gaugehistogram"})


def merge_expositions(texts: Iterable[str]) -> bytes:
    """One Prometheus text exposition from several, series by series."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            known = families.get(fam.name)
            if known is None:
                known = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            series = values[fam.name]
            add = fam.type in _ADDITIVE
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = series.get(key)
                if old is None:
                    series[key] = s.value
                elif add and not s.name.endswith("_created"):
                    series[key] = old + s.value
                else:
                    series[key] = max(old, s.value)
    for name, fam in families.items():
        fam.samples = [Sample(n, dict(labels), v) for (n, labels), v in values[name].items()]

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            yield from families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


async def publish_worker_metrics(store: SharedStore, metrics: Metrics) -> None:
    """--workers N: this worker's series, every second, for the worker serving the admin API."""
    while True:
        await store.publish("metrics", {"text": generate_latest(metrics.registry).decode()})
        await asyncio.sleep(1.0)
