"""`round_robin`: smooth weighted round robin, exact sequences (no randomness involved)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from policies.base import PickContext
from policies.registry import make_balancer
from policies.round_robin import RoundRobin


@dataclass(frozen=True)
class View:
    name: str
    weight: float = 1.0
    in_flight: int = 0
    gpu_util: float | None = None
    gpu_mem_frac: float | None = None
    pool: str = "default"

    def latency_s(self, now: float) -> float:
        return 0.0


class NoDrawRandom(random.Random):
    def random(self) -> float:
        raise AssertionError("round robin must not draw from the rng")


CTX = PickContext(rng=NoDrawRandom(), now=0.0)


def picks(balancer: RoundRobin, cands: list[View], n: int) -> list[str]:
    return [balancer.rank(cands, CTX)[0].name for _ in range(n)]


def test_registered_name() -> None:
    assert isinstance(make_balancer("round_robin"), RoundRobin)


def test_nginx_smooth_sequence_for_5_1_1() -> None:
    cands = [View("a", 5), View("b", 1), View("c", 1)]
    assert picks(RoundRobin(), cands, 21) == list("aabacaa") * 3


def test_equal_weights_cycle_in_candidate_order() -> None:
    cands = [View("a"), View("b"), View("c")]
    assert picks(RoundRobin(), cands, 9) == list("abcabcabc")


def test_every_window_of_total_weight_is_exact() -> None:
    cands = [View("a", 3), View("b", 2), View("c", 1), View("d", 4)]
    seq = picks(RoundRobin(), cands, 10 * 50)
    for start in range(0, len(seq), 10):
        assert Counter(seq[start : start + 10]) == {"a": 3, "b": 2, "c": 1, "d": 4}


def test_fractional_weights() -> None:
    cands = [View("a", 0.5), View("b", 1.5)]
    assert Counter(picks(RoundRobin(), cands, 400)) == {"a": 100, "b": 300}


def test_rank_is_chosen_then_next_due() -> None:
    rr = RoundRobin()
    cands = [View("a", 5), View("b", 1), View("c", 1)]
    # current after picks: a=-2,b=1,c=1 -> [a,b,c]; a=-4,b=2,c=2 -> [a,b,c]; a=1,b=-4,c=3 -> [b,c,a]
    ranks = ["".join(v.name for v in rr.rank(cands, CTX)) for _ in range(3)]
    assert ranks == ["abc", "abc", "bca"]


def test_zero_and_one_candidates() -> None:
    rr = RoundRobin()
    assert rr.rank([], CTX) == []
    only = [View("a")]
    assert rr.rank(only, CTX) == only


def test_departed_replica_resumes_and_the_rest_keep_rotating() -> None:
    rr = RoundRobin()
    a, b, c = View("a"), View("b"), View("c")
    assert picks(rr, [a, b, c], 2) == ["a", "b"]
    assert picks(rr, [a, b], 4) == ["a", "b", "a", "b"]  # c unhealthy: skipped, as nginx skips a down peer
    assert sorted(picks(rr, [a, b, c], 3)) == ["a", "b", "c"]


def test_state_stays_bounded_under_churn() -> None:
    rr = RoundRobin()
    for generation in range(500):
        cands = [View(f"pod-{generation}-{i}") for i in range(3)]
        rr.rank(cands, CTX)
    assert len(rr._current) <= 2 * 3 + 8 + 3
