"""`least_request`: P2C over (in_flight + 1) / weight, seeded rng, chi-square tolerance p > 0.001."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from policies.base import PickContext
from policies.least_request import LeastRequest
from policies.registry import make_balancer

CHI2_CRITICAL_P001 = {1: 10.828, 2: 13.816, 3: 16.266}


def chi_square(counts: Sequence[int], probs: Sequence[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs, strict=True))


@dataclass(frozen=True)
class View:
    name: str
    in_flight: int = 0
    weight: float = 1.0
    gpu_util: float | None = None
    gpu_mem_frac: float | None = None
    pool: str = "default"

    def latency_s(self, now: float) -> float:
        return 0.0


def test_registered_name() -> None:
    assert isinstance(make_balancer("least_request"), LeastRequest)


def test_less_loaded_replicas_win_in_p2c_proportions() -> None:
    # Ordered by in_flight 0 < 1 < 3 < 6: P(win) = 3/6, 2/6, 1/6, 0 over uniformly random pairs.
    cands = [View("a", 0), View("b", 1), View("c", 3), View("d", 6)]
    rng = random.Random(5)
    balancer = LeastRequest()
    wins = Counter(balancer.rank(cands, PickContext(rng=rng, now=0.0))[0].name for _ in range(20_000))
    assert wins["d"] == 0
    counts = [wins["a"], wins["b"], wins["c"]]
    assert chi_square(counts, [3 / 6, 2 / 6, 1 / 6]) < CHI2_CRITICAL_P001[2], counts


def test_weight_is_capacity() -> None:
    # 3 calls on weight 2 (cost 2) beat 2 calls on weight 1 (cost 3).
    big, small = View("big", in_flight=3, weight=2.0), View("small", in_flight=2, weight=1.0)
    rng = random.Random(1)
    for _ in range(100):
        assert LeastRequest().rank([small, big], PickContext(rng=rng, now=0.0)) == [big, small]


def test_retry_order_is_by_queue_length() -> None:
    cands = [View("a", 4), View("b", 0), View("c", 9), View("d", 2)]
    rng = random.Random(8)
    for _ in range(200):
        ranked = LeastRequest().rank(cands, PickContext(rng=rng, now=0.0))
        rest = [v.in_flight for v in ranked[1:]]
        assert rest == sorted(rest) and len(ranked) == 4
