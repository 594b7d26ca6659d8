"""The power-of-two-choices picker, generic over a cost function (Tower ``balance::p2c``).

Draw two distinct candidates uniformly at random and prefer the cheaper one (Mitzenmacher, "The
Power of Two Choices in Randomized Load Balancing", IEEE TPDS 2001): nearly the balance of always
picking the global minimum, without every gateway process herding onto the same replica at once.
A load metric is a ``CostFn`` (``policies/load.py``); a balancer is this picker plus one of them.

What must always hold:
- ``rank`` returns every candidate exactly once: the P2C winner first, then the rest by ascending
  cost (the retry order); equal costs are taken in candidate order starting after the winner, so
  retries after different winners do not all land on the same replica;
- 0 candidates -> ``[]``; 1 candidate -> that one, without drawing from the rng;
- costs are read once per call; the views are never mutated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policies.base import PickContext, ReplicaView

CostFn = Callable[[ReplicaView, float], float]
"""Load metric: ``(view, now) -> cost``; lower is better."""


class PowerOfTwoChoices:
    """Balancer ranking candidates by P2C over ``cost``."""

    __slots__ = ("_cost",)

    def __init__(self, cost: CostFn) -> None:
        self._cost = cost

    @property
    def cost(self) -> CostFn:
        return self._cost

    def rank(self, candidates: Sequence[ReplicaView], ctx: PickContext) -> list[ReplicaView]:
        n = len(candidates)
        if n <= 1:
            return list(candidates)
        cost = self._cost
        now = ctx.now
        costs = [cost(c, now) for c in candidates]
        rand = ctx.rng.random
        # Two distinct indices, uniform over ordered pairs: i in [0, n), j in [0, n) minus {i}.
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        # Ties go to i; since (i, j) is a uniformly ordered pair, ties are broken at random.
        winner = i if costs[i] <= costs[j] else j
        if n == 2:
            return [candidates[winner], candidates[1 - winner]]
        rest = [*range(winner + 1, n), *range(winner)]
        rest.sort(key=costs.__getitem__)  # stable: equal costs keep the rotated candidate order
        ranked = [candidates[winner]]
        ranked.extend([candidates[k] for k in rest])
        return ranked
