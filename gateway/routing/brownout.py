"""Which calls a brownout moves to the fallback tier: lowest priority first.

A pool in brownout at level L (gateway.scaling.brownout) asks each model with a fallback chain
to move the share L x `brownout.max_share` of its calls. Priorities come from the `x-priority`
header (sheddable < standard < critical; none is standard). The recent mix of priorities per
model (an exponentially decaying count, half-life ~10 s) says how much of the traffic each
class is, so the share is taken from sheddable calls first, then standard ones; critical calls
are never moved.

What must always hold: pure apart from the rng passed in; a share of 0 moves nothing; at most
the share is moved (in expectation); memory is bounded by the number of configured models.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

PRIORITIES = ("sheddable", "standard", "critical")
HALF_LIFE_S = 10.0


class PriorityMix:
    """Decaying counts of a model's calls by priority."""

    __slots__ = ("counts", "at")

    def __init__(self, now: float) -> None:
        self.counts = [0.0, 0.0, 0.0]
        self.at = now

    def add(self, klass: int, now: float) -> None:
        if now > self.at:
            decay = math.exp2(-(now - self.at) / HALF_LIFE_S)
            self.counts = [c * decay for c in self.counts]
            self.at = now
        self.counts[klass] += 1.0


def priority_class(headers: Mapping[str, str]) -> int:
    p = headers.get("x-priority", "standard")
    return 0 if p == "sheddable" else 2 if p == "critical" else 1


class BrownoutPicker:
    def __init__(self) -> None:
        self.mixes: dict[str, PriorityMix] = {}

    def divert(self, model: str, headers: Mapping[str, str], share: float, now: float,
               rng: random.Random) -> bool:
        """Count this call; True when it should go to the fallback tier (share of 0..1)."""
        klass = priority_class(headers)
        mix = self.mixes.get(model)
        if mix is None:
            mix = self.mixes[model] = PriorityMix(now)
        mix.add(klass, now)
        if share <= 0.0 or klass == 2:
            return False
        total = sum(mix.counts)
        shed, std = mix.counts[0] / total, mix.counts[1] / total
        if klass == 0:
            p = 1.0 if shed <= 0.0 else min(1.0, share / shed)
        else:
            p = 0.0 if std <= 0.0 else max(0.0, min(1.0, (share - shed) / std))
        return p > 0.0 and rng.random() < p
