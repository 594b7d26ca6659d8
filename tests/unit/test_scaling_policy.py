"""PoolScalePolicy validation: every contradiction is refused with the key path that causes it."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.scaling import (
    DEFAULT_DOWN,
    DEFAULT_UP,
    PoolScalePolicy,
    RatePolicy,
    Thresholds,
    policy_from_mapping,
    validate_thresholds,
)


def test_defaults_are_the_seed_table() -> None:
    p = PoolScalePolicy()
    assert p.up.as_dict() == {
        "p95_latency_ms": 200,
        "queue_depth": 100,
        "gpu_util": 0.8,
        "cpu_util": 0.7,
        "rps_ratio": 0.8,
    }
    assert p.down.as_dict() == {
        "p95_latency_ms": 50,
        "queue_depth": 10,
        "gpu_util": 0.2,
        "cpu_util": 0.3,
        "rps_ratio": 0.3,
    }
    assert (p.min_replicas, p.max_replicas, p.window_up_s, p.window_down_s, p.tolerance) == (
        2,
        20,
        60,
        300,
        0.1,
    )
    assert p.up_policies == (RatePolicy("percent", 50, 60),)
    assert p.down_policies == (RatePolicy("percent", 20, 60),)


def test_design_block_parses() -> None:
    p = policy_from_mapping(
        {
            "min_replicas": 2,
            "max_replicas": 20,
            "up": {
                "p95_latency_ms": 200,
                "queue_depth": 100,
                "gpu_util": 0.8,
                "cpu_util": 0.7,
                "rps_ratio": 0.8,
            },
            "down": {
                "p95_latency_ms": 50,
                "queue_depth": 10,
                "gpu_util": 0.2,
                "cpu_util": 0.3,
                "rps_ratio": 0.3,
            },
            "window_up_s": 60,
            "window_down_s": 300,
        },
        "autoscale.gpu",
    )
    assert p == PoolScalePolicy()


def test_null_keeps_the_default() -> None:
    p = policy_from_mapping({"up": {"gpu_util": None}, "scale_to_zero_after_s": None, "max_replicas": None})
    assert p == PoolScalePolicy()


def test_partial_thresholds_keep_defaults_and_policies_parse() -> None:
    p = policy_from_mapping(
        {
            "up": {"gpu_util": 0.9},
            "up_policies": [{"pods": 4, "period_s": 15}, {"percent": 100, "period_s": 15}],
            "select_up": "min",
            "scale_to_zero_after_s": 600,
            "min_replicas": 0,
        }
    )
    assert p.up.gpu_util == 0.9 and p.up.p95_latency_ms == 200
    assert p.up_policies == (RatePolicy("pods", 4, 15), RatePolicy("percent", 100, 15))
    assert (p.select_up, p.min_replicas, p.scale_to_zero_after_s) == ("min", 0, 600)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"down": {"p95_latency_ms": 250}},
            "autoscale.gpu.down.p95_latency_ms: 250 must be below up.p95_latency_ms 200",
        ),
        ({"down": {"gpu_util": 0.8}}, "autoscale.gpu.down.gpu_util: 0.8 must be below up.gpu_util 0.8"),
        ({"min_replicas": 5, "max_replicas": 3}, "autoscale.gpu.min_replicas: 5 is above max_replicas 3"),
        ({"min_replicas": -1}, "autoscale.gpu.min_replicas: must not be negative, got -1"),
        ({"max_replicas": 0, "min_replicas": 0}, "autoscale.gpu.max_replicas: must be at least 1, got 0"),
        ({"max_replicas": 2.5}, "autoscale.gpu.max_replicas: expected a whole number, got 2.5"),
        ({"window_up_s": -5}, "autoscale.gpu.window_up_s: must not be negative, got -5"),
        ({"up": {"queue_depth": -1}}, "autoscale.gpu.up.queue_depth: must not be negative, got -1"),
        (
            {"up": {"gpu_util": 80}},
            "autoscale.gpu.up.gpu_util: is a fraction of 1, got 80 (write 0.8 for 80%)",
        ),
        (
            {"up": {"p95_latency_ms": "fast"}},
            "autoscale.gpu.up.p95_latency_ms: expected a number, got 'fast'",
        ),
        ({"up": {"latency": 1}}, "autoscale.gpu.up.latency: unknown metric"),
        (
            {"down": {"queue_depth": 0}, "up": {"queue_depth": 0}},
            "autoscale.gpu.up.queue_depth: must be above 0, got 0",
        ),
        ({"min_replicas": 0}, "autoscale.gpu.min_replicas: 0 needs scale_to_zero_after_s"),
        ({"tolerance": 1.5}, "autoscale.gpu.tolerance: must be below 1, got 1.5"),
        ({"scale_to_zero_after_s": 0}, "autoscale.gpu.scale_to_zero_after_s: must be above 0, got 0"),
        (
            {"up_policies": [{"percent": 0, "period_s": 60}]},
            "autoscale.gpu.up_policies[0].percent: must be above 0",
        ),
        ({"down_policies": [{"percent": 20}]}, "autoscale.gpu.down_policies[0].period_s: missing"),
        (
            {"down_policies": [{"percent": 20, "pods": 1, "period_s": 60}]},
            "autoscale.gpu.down_policies[0]: give exactly one of percent or pods",
        ),
        (
            {"up_policies": [{"pods": 1.5, "period_s": 60}]},
            "autoscale.gpu.up_policies[0].pods: expected a whole number",
        ),
        (
            {"up_policies": []},
            "autoscale.gpu.up_policies: needs at least one policy unless select_up is disabled",
        ),
        (
            {"select_down": "sometimes"},
            "autoscale.gpu.select_down: must be max, min or disabled, got 'sometimes'",
        ),
        ({"windows": 3}, "autoscale.gpu.windows: unknown key"),
    ],
)
def test_contradictions_are_refused_with_key_path(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        policy_from_mapping(block, "autoscale.gpu")
    assert str(err.value).startswith(message)


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match=r"^min_replicas: 3 is above max_replicas 2$"):
        PoolScalePolicy(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match=r"^period_s: must be above 0, got 0$"):
        RatePolicy("percent", 10, 0)
    with pytest.raises(ValueError, match=r"^down.cpu_util: 0.9 must be below up.cpu_util 0.7$"):
        validate_thresholds(DEFAULT_UP, Thresholds(**{**DEFAULT_DOWN.as_dict(), "cpu_util": 0.9}))


def test_policies_are_frozen() -> None:
    p = PoolScalePolicy()
    with pytest.raises(AttributeError):
        p.min_replicas = 3  # type: ignore[misc]
