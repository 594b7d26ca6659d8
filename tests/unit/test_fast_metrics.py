"""The lock-free hot-path metrics expose exactly what prometheus_client's Counter/Histogram do."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from gateway.core.metrics import LATENCY_BUCKETS, FastCounter, FastHistogram, Metrics

CREATED = re.compile(r"^(\S+_created(?:\{[^}]*\})?) \S+$", re.M)


def _text(registry: CollectorRegistry, openmetrics: bool = False) -> str:
    out = (generate_openmetrics if openmetrics else generate_latest)(registry).decode()
    return CREATED.sub(r"\1 <created>", out)  # creation times differ between the two registries


# Exactly on a bound (several), between bounds, below the first, above the last, zero.
VALUES = [0.0005, 0.0003, 0.0, 0.001, 0.0011, 0.25, 1.0, 29.9, 30.0, 30.0001, 1e6, 0.0025]


def _pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    ref, fast = CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)
    args = ("t_requests_total", "Calls answered.", ["protocol", "model", "code"])
    rc, fc = Counter(*args, registry=ref), FastCounter(*args, registry=fast)
    hargs = ("t_duration_seconds", "Latency.", ["protocol", "model"])
    rh = Histogram(*hargs, buckets=LATENCY_BUCKETS, registry=ref)
    fh = FastHistogram(*hargs, buckets=LATENCY_BUCKETS, registry=fast)
    for i, v in enumerate(VALUES):
        model = f"m{i % 3}"
        code = "200" if i % 4 else "503"
        rc.labels("rest", model, code).inc()
        fc.labels("rest", model, code).inc()
        rh.labels("rest", model).observe(v)
        fh.labels("rest", model).observe(v)
    rc.labels("grpc", "x", "OK").inc(2.5)
    fc.labels("grpc", "x", "OK").inc(2.5)
    rh.labels(protocol="grpc", model="x").observe(30.0)
    fh.labels(protocol="grpc", model="x").observe(30.0)
    rc.labels("grpc", "y", 404).inc()  # non-str label values are str()-ed, as prometheus does
    fc.labels("grpc", "y", 404).inc()
    return ref, fast


@pytest.mark.parametrize("openmetrics", [False, True])
def test_exposition_matches_prometheus_client(openmetrics: bool) -> None:
    ref, fast = _pair()
    expected = _text(ref, openmetrics)
    assert 'le="0.0005"' in expected and 'le="+Inf"' in expected and "_created" in expected
    assert _text(fast, openmetrics) == expected


def test_bucket_boundaries() -> None:
    h = FastHistogram("b_seconds", "b", ["x"], buckets=(1.0, 2.0), registry=None)
    c = h.labels("a")
    for v in (0.5, 1.0, 1.5, 2.0, 2.5):
        c.observe(v)
    assert c.counts == [2, 2, 1]  # le=1: 0.5, 1.0; le=2: 1.5, 2.0; +Inf: 2.5
    assert c.sum == pytest.approx(7.5)


def test_empty_metrics_match() -> None:
    ref, fast = CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)
    Counter("e_total", "e", ["a"], registry=ref)
    FastCounter("e_total", "e", ["a"], registry=fast)
    Histogram("e_seconds", "e", ["a"], buckets=LATENCY_BUCKETS, registry=ref)
    FastHistogram("e_seconds", "e", ["a"], buckets=LATENCY_BUCKETS, registry=fast)
    assert _text(fast) == _text(ref)


def test_label_count_and_names_are_validated() -> None:
    c = FastCounter("v_total", "v", ["a", "b"], registry=None)
    h = FastHistogram("v_seconds", "v", ["a"], buckets=LATENCY_BUCKETS, registry=None)
    for bad in [(), ("1",), ("1", "2", "3")]:
        with pytest.raises(ValueError):
            c.labels(*bad)
    with pytest.raises(ValueError):
        h.labels("1", "2")
    with pytest.raises(ValueError):
        h.labels()
    with pytest.raises(ValueError):
        c.labels(a="1")
    with pytest.raises(ValueError):
        c.labels("1", b="2")
    with pytest.raises(ValueError):
        FastHistogram("w_seconds", "w", ["le"], buckets=LATENCY_BUCKETS, registry=None)
    with pytest.raises(ValueError):
        FastCounter("w_total", "w", ["bad-name"], registry=None)
    with pytest.raises(ValueError):
        FastHistogram("w_seconds", "w", ["a"], buckets=(2.0, 1.0), registry=None)
    with pytest.raises(ValueError):
        c.labels("1", "2").inc(-1)
    assert c.labels("1", "2") is c.labels(a="1", b="2") is c.labels(1, 2)


def test_duplicate_registration_is_refused() -> None:
    r = CollectorRegistry(auto_describe=True)
    FastCounter("d_total", "d", ["a"], registry=r)
    with pytest.raises(ValueError):
        Counter("d_total", "d", ["a"], registry=r)
    FastHistogram("d_seconds", "d", ["a"], buckets=LATENCY_BUCKETS, registry=r)
    with pytest.raises(ValueError):
        Histogram("d_seconds", "d", ["a"], buckets=LATENCY_BUCKETS, registry=r)


def test_metrics_child_uses_the_fast_series() -> None:
    mx = Metrics()
    c = mx.child(mx.requests, "rest", "m", "1", "r0", "200")
    assert c is mx.requests.labels("rest", "m", "1", "r0", "200")
    c.inc()
    mx.child(mx.latency, "rest", "m").observe(0.001)
    mx.child(mx.upstream_latency, "r0").observe(0.002)
    mx.child(mx.split_arm, "m", "canary").inc()
    with pytest.raises(ValueError):
        mx.child(mx.latency, "rest")
    # The other metrics still go through prometheus_client and the cache.
    assert mx.child(mx.retries, "m") is mx.child(mx.retries, "m")
    get = mx.registry.get_sample_value
    labels = {"protocol": "rest", "model": "m", "version": "1", "replica": "r0", "code": "200"}
    assert get("infergate_requests_total", labels) == 1.0
    assert get("infergate_request_duration_seconds_bucket",
               {"protocol": "rest", "model": "m", "le": "0.001"}) == 1.0
    assert get("infergate_request_duration_seconds_bucket",
               {"protocol": "rest", "model": "m", "le": "0.0005"}) == 0.0
    assert get("infergate_upstream_duration_seconds_count", {"replica": "r0"}) == 1.0
    assert get("infergate_upstream_duration_seconds_sum", {"replica": "r0"}) == 0.002
    assert get("infergate_split_arm_total", {"model": "m", "arm": "canary"}) == 1.0
