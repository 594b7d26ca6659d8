"""Weighted traffic split between arms (labels, versions, pools), with optional user bucketing.

``WeightedSplit([(stable, 90), (canary, 10)], salt=model)`` picks an arm with probability
proportional to its weight. With a bucket key (e.g. the ``x-user-id`` header) the pick is a pure
function of (salt, key, weights): BLAKE2b maps the key to a point u in [0, 1) and the arm whose
slice of the cumulative weights contains u wins, so the same user always gets the same arm, in
every gateway process. Without a key u comes from ``rng.random()``.

Monotone growth: arms occupy consecutive slices of [0, 1) in the order given. When an arm at either
end (first or last) grows and the others shrink, its slice only grows, so users already on it stay
on it: with two arms this holds whatever the order, with more put the canary first (or last).
A middle arm's slice shifts as its neighbours change, so users may move on and off it.

What must always hold:
- weights are finite and >= 0 with a positive total, or construction raises ``ValueError``;
- an arm of weight 0 is never picked;
- a pick is one hash (or one ``rng.random()``) and one bisect over precomputed cumulative weights.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

_TOP53 = 2.0**-53


class WeightedSplit(Generic[T]):
    """Chooses one of ``arms`` (``(arm, weight)`` pairs; weights need not sum to 100)."""

    __slots__ = ("_arms", "_weights", "_cumulative", "_total", "_last", "_hasher")

    def __init__(self, arms: Sequence[tuple[T, float]], salt: str = "") -> None:
        if not arms:
            raise ValueError("a split needs at least one arm")
        cumulative: list[float] = []
        total = 0.0
        last = -1
        for i, (arm, weight) in enumerate(arms):
            if not (weight >= 0.0 and math.isfinite(weight)):
                raise ValueError(f"split weight of arm {arm!r} must be a finite number >= 0, got {weight!r}")
            total += weight
            cumulative.append(total)
            if weight > 0.0:
                last = i
        if not total > 0.0:
            raise ValueError(f"split weights must have a positive total, got {[w for _, w in arms]}")
        self._arms: tuple[T, ...] = tuple(arm for arm, _ in arms)
        self._weights: tuple[float, ...] = tuple(float(w) for _, w in arms)
        self._cumulative = cumulative
        self._total = total
        # u < 1 keeps u * total below the top for any rng honouring random()'s [0, 1); the clamp
        # keeps an rng that returns 1.0 off trailing zero-weight arms and inside the tuple.
        self._last = last
        # The salt (e.g. the model name) decorrelates splits: a user on the canary of one model is not
        # thereby on the canary of every model. A length-prefixed salt keeps ("ab", "c") != ("a", "bc").
        salt_bytes = salt.encode("utf-8", "surrogatepass")
        self._hasher = hashlib.blake2b(len(salt_bytes).to_bytes(4, "big") + salt_bytes, digest_size=8)

    @property
    def arms(self) -> tuple[T, ...]:
        return self._arms

    @property
    def weights(self) -> tuple[float, ...]:
        return self._weights

    def fractions(self) -> tuple[float, ...]:
        """Each arm's expected share of picks."""
        return tuple(w / self._total for w in self._weights)

    def position(self, bucket_key: str) -> float:
        """The key's stable point in [0, 1) for this split's salt."""
        h = self._hasher.copy()
        h.update(bucket_key.encode("utf-8", "surrogatepass"))
        # Top 53 bits: exactly representable, so the result is strictly below 1.0.
        return (int.from_bytes(h.digest(), "big") >> 11) * _TOP53

    def pick(self, bucket_key: str | None, rng: random.Random) -> T:
        """The arm for ``bucket_key`` (stable), or a random arm by weight when there is no key."""
        u = rng.random() if bucket_key is None else self.position(bucket_key)
        i = bisect_right(self._cumulative, u * self._total)
        return self._arms[i if i <= self._last else self._last]
