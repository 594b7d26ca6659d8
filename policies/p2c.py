"""The power-of-two-choices picker, generic over a cost function (Tower ``balance::p2c``).

Draw two distinct candidates uniformly at random and prefer the cheaper one (Mitzenmacher, "The
Power of Two Choices in Randomized Load Balancing", IEEE TPDS 2001): nearly the balance of always
picking the global minimum, without every gateway process herding onto the same replica at once.
A load metric is a ``CostFn`` (``policies/load.py``); a balancer is this picker plus one of them.
``choices=d`` draws d > 2 candidates instead (the "power of d choices", same paper): closer to the
global minimum, still random enough not to herd. A cost that needs the whole candidate set (a
fleet mean) overrides ``costs``.

What must always hold:
- ``rank`` returns every candidate exactly once: the P2C winner first, then the rest by ascending
  cost (the retry order); equal costs are taken in candidate order starting after the winner, so
  retries after different winners do not all land on the same replica;
- 0 candidates -> ``[]``; 1 candidate -> that one, without drawing from the rng;
- costs are read once per call; the views are never mutated;
- with ``choices=2`` the draws are exactly two ``rng.random()`` calls per ranking (seeded tests
  pin the sequence); with d choices, d draws (a partial Fisher-Yates shuffle), d capped at n.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policies.base import PickContext, ReplicaView

CostFn = Callable[[ReplicaView, float], float]
"""Load metric: ``(view, now) -> cost``; lower is better."""


class PowerOfTwoChoices:
    """Balancer ranking candidates by P2C over ``cost``."""

    __slots__ = ("_cost", "_choices")

    def __init__(self, cost: CostFn, choices: int = 2) -> None:
        if choices < 2:
            raise ValueError(f"choices must be >= 2, got {choices}")
        self._cost = cost
        self._choices = choices

    @property
    def cost(self) -> CostFn:
        return self._cost

    def costs(self, candidates: Sequence[ReplicaView], now: float) -> list[float]:
        """Every candidate's cost, in candidate order."""
        cost = self._cost
        return [cost(c, now) for c in candidates]

    def rank(self, candidates: Sequence[ReplicaView], ctx: PickContext) -> list[ReplicaView]:
        n = len(candidates)
        if n <= 1:
            return list(candidates)
        costs = self.costs(candidates, ctx.now)
        rand = ctx.rng.random
        if self._choices == 2 or n == 2:
            # Two distinct indices, uniform over ordered pairs: i in [0, n), j in [0, n) minus {i}.
            i = int(rand() * n)
            j = int(rand() * (n - 1))
            if j >= i:
                j += 1
            # Ties go to i; since (i, j) is a uniformly ordered pair, ties are broken at random.
            winner = i if costs[i] <= costs[j] else j
        else:
            # d distinct indices by a partial Fisher-Yates shuffle; the first drawn wins ties.
            idx = list(range(n))
            winner = -1
            for k in range(min(self._choices, n)):
                m = k + int(rand() * (n - k))
                idx[k], idx[m] = idx[m], idx[k]
                if winner < 0 or costs[idx[k]] < costs[winner]:
                    winner = idx[k]
        if n == 2:
            return [candidates[winner], candidates[1 - winner]]
        rest = [*range(winner + 1, n), *range(winner)]
        rest.sort(key=costs.__getitem__)  # stable: equal costs keep the rotated candidate order
        ranked = [candidates[winner]]
        ranked.extend([candidates[k] for k in rest])
        return ranked
