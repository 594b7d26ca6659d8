"""``round_robin``: smooth weighted round robin, as nginx's upstream module does it.

Each pick adds every candidate's weight to its running "current weight", takes the largest, and
subtracts the total weight from the one taken (nginx ``ngx_http_upstream_get_peer``, 2012). Over any
window of ``sum(weights)`` picks with integer weights each replica is chosen exactly ``weight`` times,
and picks are interleaved (5:1:1 gives a a b a c a a, not a a a a a b c).

What must always hold:
- ``rank`` returns every candidate exactly once: the chosen one first, then the rest in the order
  the rotation would serve them next (highest current weight first, ties in candidate order after
  the chosen one), which is the retry order;
- state is per balancer instance and keyed by replica name, so a replica that leaves and returns
  resumes where it was (as nginx does for a peer marked down); names that stay gone are forgotten;
- the rng is never drawn: the rotation is deterministic given the sequence of candidate lists.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.base import PickContext, ReplicaView
from policies.registry import register_balancer


@register_balancer("round_robin")
class RoundRobin:
    """Smooth weighted round robin over the candidates of each call (names must be unique)."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def rank(self, candidates: Sequence[ReplicaView], ctx: PickContext) -> list[ReplicaView]:
        n = len(candidates)
        if n <= 1:
            return list(candidates)
        current = self._current
        if len(current) > 2 * n + 8:
            self._forget_departed(candidates)
        weights = [0.0] * n
        total = 0.0
        best = 0
        best_weight = float("-inf")
        for k, replica in enumerate(candidates):
            w = replica.weight
            total += w
            cw = current.get(replica.name, 0.0) + w
            weights[k] = cw
            if cw > best_weight:  # strict: ties go to the earlier candidate, as in nginx
                best = k
                best_weight = cw
        weights[best] -= total
        for k, replica in enumerate(candidates):
            current[replica.name] = weights[k]
        if n == 2:
            return [candidates[best], candidates[1 - best]]
        rest = [*range(best + 1, n), *range(best)]
        rest.sort(key=weights.__getitem__, reverse=True)  # stable, so ties keep rotation order
        ranked = [candidates[best]]
        ranked.extend([candidates[k] for k in rest])
        return ranked

    def _forget_departed(self, candidates: Sequence[ReplicaView]) -> None:
        # Bounded memory under replica churn (e.g. pods renamed on every deploy).
        present = {replica.name for replica in candidates}
        for name in [name for name in self._current if name not in present]:
            del self._current[name]
