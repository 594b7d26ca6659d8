"""Weighted split: proportions (chi-square, p > 0.001 over 20k picks), stable and monotone bucketing."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from policies.split import WeightedSplit

REPO = Path(__file__).resolve().parents[2]
CHI2_CRITICAL_P001 = {1: 10.828, 2: 13.816, 3: 16.266}
N = 20_000


def chi_square(counts: Sequence[int], probs: Sequence[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs, strict=True))


def user_ids(seed: int, n: int = N) -> list[str]:
    rng = random.Random(seed)
    return [f"user-{rng.getrandbits(48):012x}" for _ in range(n)]


@pytest.mark.parametrize("weights", [(70.0, 20.0, 10.0), (1.0, 1.0), (3.0, 1.0, 0.5, 2.0)])
def test_keyless_proportions(weights: tuple[float, ...]) -> None:
    split = WeightedSplit([(f"arm{i}", w) for i, w in enumerate(weights)])
    rng = random.Random(17)
    got = Counter(split.pick(None, rng) for _ in range(N))
    counts = [got[f"arm{i}"] for i in range(len(weights))]
    assert chi_square(counts, split.fractions()) < CHI2_CRITICAL_P001[len(weights) - 1], counts


@pytest.mark.parametrize("weights", [(70.0, 20.0, 10.0), (95.0, 5.0)])
def test_keyed_proportions(weights: tuple[float, ...]) -> None:
    split = WeightedSplit([(f"arm{i}", w) for i, w in enumerate(weights)], salt="resnet50")
    rng = random.Random(0)
    got = Counter(split.pick(key, rng) for key in user_ids(23))
    counts = [got[f"arm{i}"] for i in range(len(weights))]
    assert chi_square(counts, split.fractions()) < CHI2_CRITICAL_P001[len(weights) - 1], counts


def test_weights_need_not_sum_to_100() -> None:
    split = WeightedSplit([("a", 1.0), ("b", 3.0)])
    assert split.fractions() == (0.25, 0.75)


def test_same_key_same_arm_across_instances_and_draws() -> None:
    arms = [("canary", 30.0), ("stable", 70.0)]
    one, two = WeightedSplit(arms, salt="m"), WeightedSplit(arms, salt="m")
    rng = random.Random(1)
    for key in user_ids(5, 500):
        arm = one.pick(key, rng)
        assert all(one.pick(key, rng) == arm for _ in range(3))
        assert two.pick(key, random.Random(999)) == arm


def test_salt_decorrelates_splits() -> None:
    arms = [("canary", 50.0), ("stable", 50.0)]
    a, b = WeightedSplit(arms, salt="model-a"), WeightedSplit(arms, salt="model-b")
    rng = random.Random(0)
    keys = user_ids(9, 4000)
    agree = sum(a.pick(k, rng) == b.pick(k, rng) for k in keys) / len(keys)
    assert 0.45 < agree < 0.55  # independent halves agree half of the time (sd 0.8%)


@pytest.mark.parametrize("canary_first", [True, False])
def test_growing_canary_keeps_its_users(canary_first: bool) -> None:
    keys = user_ids(31, 5000)
    rng = random.Random(0)
    previous: set[str] = set()
    for pct in [1, 5, 10, 25, 50, 75, 99, 100]:
        arms = [("canary", float(pct)), ("stable", float(100 - pct))]
        split = WeightedSplit(arms if canary_first else arms[::-1], salt="model")
        on_canary = {k for k in keys if split.pick(k, rng) == "canary"}
        assert previous <= on_canary, f"users left the canary when it grew to {pct}%"
        previous = on_canary
    assert previous == set(keys)


def test_growing_first_of_three_arms_keeps_its_users() -> None:
    keys = user_ids(37, 5000)
    rng = random.Random(0)
    small = WeightedSplit([("canary", 5.0), ("stable", 80.0), ("shadow-pool", 15.0)], salt="m")
    large = WeightedSplit([("canary", 30.0), ("stable", 60.0), ("shadow-pool", 10.0)], salt="m")
    before = {k for k in keys if small.pick(k, rng) == "canary"}
    assert before and before <= {k for k in keys if large.pick(k, rng) == "canary"}


def test_zero_weight_arm_is_never_picked() -> None:
    for arms in (
        [("off", 0.0), ("on", 1.0)],
        [("on", 1.0), ("off", 0.0)],
        [("a", 1.0), ("off", 0.0), ("b", 1.0), ("off2", 0.0)],
    ):
        split = WeightedSplit(arms)
        rng = random.Random(2)
        assert not {split.pick(None, rng) for _ in range(3000)} & {"off", "off2"}
        assert not {split.pick(k, rng) for k in user_ids(3, 3000)} & {"off", "off2"}


def test_position_is_in_unit_interval_and_the_top_goes_to_the_last_weighted_arm() -> None:
    split = WeightedSplit([("a", 1.0), ("b", 2.0), ("zero", 0.0)])

    class Edge(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__(0)
            self.value = value

        def random(self) -> float:
            return self.value

    assert split.pick(None, Edge(math.nextafter(1.0, 0.0))) == "b"
    assert split.pick(None, Edge(1.0)) == "b"  # out of contract, still never the zero-weight arm
    assert split.pick(None, Edge(0.0)) == "a"
    assert all(0.0 <= split.position(k) < 1.0 for k in user_ids(4, 2000))


@pytest.mark.parametrize(
    "arms, message",
    [
        ([], "at least one arm"),
        ([("a", 0.0), ("b", 0.0)], "positive total"),
        ([("a", -1.0), ("b", 5.0)], ">= 0"),
        ([("a", math.nan)], ">= 0"),
        ([("a", math.inf)], ">= 0"),
    ],
)
def test_invalid_weights_raise_clear_errors(arms: list[tuple[str, float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightedSplit(arms)


def test_same_positions_in_another_process() -> None:
    keys = user_ids(41, 300)
    split = WeightedSplit([("canary", 10.0), ("stable", 90.0)], salt="bert")
    expected = [split.position(k) for k in keys]
    code = (
        "import json, sys\n"
        "from policies.split import WeightedSplit\n"
        "s = WeightedSplit([('canary', 10.0), ('stable', 90.0)], salt='bert')\n"
        "print(json.dumps([s.position(k) for k in json.loads(sys.argv[1])]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "777", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(keys)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == expected
