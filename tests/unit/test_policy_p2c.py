"""The generic power-of-two-choices picker, with a seeded rng and statistical assertions.

Tolerance: proportions are checked with a chi-square goodness-of-fit test at p > 0.001 (critical
values from the standard chi-square table); with fixed seeds the outcome is reproducible, and the
threshold says how unlucky a correct implementation would have to be to fail.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from policies.base import PickContext, ReplicaView
from policies.p2c import PowerOfTwoChoices

CHI2_CRITICAL_P001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}


def chi_square(counts: Sequence[int], probs: Sequence[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs, strict=True))


@dataclass(frozen=True)
class View:
    name: str
    load: float = 0.0
    weight: float = 1.0
    in_flight: int = 0
    gpu_util: float | None = None
    gpu_mem_frac: float | None = None
    pool: str = "default"

    def latency_s(self, now: float) -> float:
        return 0.0


def by_load(view: ReplicaView, now: float) -> float:
    """A whole load metric in one line: what the test views carry."""
    assert isinstance(view, View)
    return view.load


class NoDrawRandom(random.Random):
    def random(self) -> float:
        raise AssertionError("the rng must not be drawn")


def views(*loads: float) -> list[View]:
    return [View(f"r{i}", load) for i, load in enumerate(loads)]


def test_no_candidates() -> None:
    assert PowerOfTwoChoices(by_load).rank([], PickContext(rng=NoDrawRandom(), now=0.0)) == []


def test_one_candidate_needs_no_draw() -> None:
    only = views(5.0)
    assert PowerOfTwoChoices(by_load).rank(only, PickContext(rng=NoDrawRandom(), now=0.0)) == only


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_rank_is_a_permutation_winner_then_by_cost(n: int) -> None:
    rng = random.Random(n)
    p2c = PowerOfTwoChoices(by_load)
    for _ in range(300):
        cands = views(*(rng.choice([0.0, 1.0, 2.0, 3.5]) for _ in range(n)))
        ranked = p2c.rank(cands, PickContext(rng=rng, now=0.0))
        assert sorted(v.name for v in ranked) == sorted(v.name for v in cands)
        rest = [by_load(v, 0.0) for v in ranked[1:]]
        assert rest == sorted(rest)


def test_the_cheaper_of_the_pair_wins_with_p2c_probabilities() -> None:
    # Costs 0 < 2 < 4 < 8. Each unordered pair is equally likely (1/6) and its cheaper member wins,
    # so P(win) = 3/6, 2/6, 1/6, 0 (Mitzenmacher 2001). 20k draws, chi-square p > 0.001.
    cands = views(0.0, 2.0, 4.0, 8.0)
    rng = random.Random(2001)
    p2c = PowerOfTwoChoices(by_load)
    wins = Counter(p2c.rank(cands, PickContext(rng=rng, now=0.0))[0].name for _ in range(20_000))
    assert wins["r3"] == 0
    counts = [wins["r0"], wins["r1"], wins["r2"]]
    assert chi_square(counts, [3 / 6, 2 / 6, 1 / 6]) < CHI2_CRITICAL_P001[2], counts


def test_ties_are_broken_uniformly() -> None:
    cands = views(1.0, 1.0, 1.0, 1.0, 1.0)
    rng = random.Random(7)
    p2c = PowerOfTwoChoices(by_load)
    wins = Counter(p2c.rank(cands, PickContext(rng=rng, now=0.0))[0].name for _ in range(20_000))
    counts = [wins[v.name] for v in cands]
    assert chi_square(counts, [0.2] * 5) < CHI2_CRITICAL_P001[4], counts


def test_two_candidates_always_the_cheaper() -> None:
    rng = random.Random(3)
    p2c = PowerOfTwoChoices(by_load)
    for _ in range(1000):
        ranked = p2c.rank(views(2.0, 1.0), PickContext(rng=rng, now=0.0))
        assert [v.name for v in ranked] == ["r1", "r0"]


def test_retry_order_among_equal_costs_follows_the_winner() -> None:
    # After different winners, the first retry should not always be the same replica.
    rng = random.Random(11)
    p2c = PowerOfTwoChoices(by_load)
    seconds = Counter(
        p2c.rank(views(1.0, 1.0, 1.0, 1.0), PickContext(rng=rng, now=0.0))[1].name for _ in range(4000)
    )
    assert len(seconds) == 4 and min(seconds.values()) > 600, seconds


def test_cost_sees_the_context_time() -> None:
    seen: list[float] = []

    def recording(view: ReplicaView, now: float) -> float:
        seen.append(now)
        return 0.0

    PowerOfTwoChoices(recording).rank(views(0.0, 0.0, 0.0), PickContext(rng=random.Random(1), now=42.5))
    assert seen == [42.5, 42.5, 42.5]


def test_same_seed_same_choices() -> None:
    cands = views(0.0, 1.0, 1.0, 3.0, 0.5)
    p2c = PowerOfTwoChoices(by_load)
    a, b = random.Random(99), random.Random(99)
    first = [p2c.rank(cands, PickContext(rng=a, now=0.0))[0].name for _ in range(200)]
    second = [p2c.rank(cands, PickContext(rng=b, now=0.0))[0].name for _ in range(200)]
    assert first == second


def test_best_of_three_wins_with_power_of_d_probabilities() -> None:
    # Costs 0 < 2 < 4 < 8, three drawn of four: the cheapest drawn wins. r0 is drawn 3/4 of the
    # time; otherwise r1 (the other three are drawn) wins; r2 and r3 never. Chi-square p > 0.001.
    cands = views(0.0, 2.0, 4.0, 8.0)
    rng = random.Random(2002)
    p3c = PowerOfTwoChoices(by_load, choices=3)
    wins = Counter(p3c.rank(cands, PickContext(rng=rng, now=0.0))[0].name for _ in range(20_000))
    assert wins["r2"] == 0 and wins["r3"] == 0
    assert chi_square([wins["r0"], wins["r1"]], [0.75, 0.25]) < CHI2_CRITICAL_P001[1], wins


def test_choices_beyond_the_candidates_take_the_global_minimum() -> None:
    rng = random.Random(5)
    p9c = PowerOfTwoChoices(by_load, choices=9)
    for _ in range(200):
        ranked = p9c.rank(views(3.0, 1.0, 2.0, 0.5, 4.0), PickContext(rng=rng, now=0.0))
        assert [v.name for v in ranked] == ["r3", "r1", "r2", "r0", "r4"]


def test_best_of_three_ranks_every_candidate_and_breaks_ties_at_random() -> None:
    rng = random.Random(8)
    p3c = PowerOfTwoChoices(by_load, choices=3)
    cands = views(1.0, 1.0, 1.0, 1.0, 1.0)
    wins = Counter()
    for _ in range(20_000):
        ranked = p3c.rank(cands, PickContext(rng=rng, now=0.0))
        assert sorted(v.name for v in ranked) == [v.name for v in cands]
        wins[ranked[0].name] += 1
    assert chi_square([wins[v.name] for v in cands], [0.2] * 5) < CHI2_CRITICAL_P001[4], wins


def test_fewer_than_two_choices_is_refused() -> None:
    with pytest.raises(ValueError, match="choices"):
        PowerOfTwoChoices(by_load, choices=1)
