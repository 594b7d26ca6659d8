"""``least_loaded``: best of three random candidates by in-flight calls, peak-EWMA latency and
GPU pressure.

The default balancer for GPU replicas: it draws three candidates at random (the power of d
choices, Mitzenmacher 2001; both when there are only two) and takes the cheapest by
``load.least_loaded_costs``: ``(in_flight + 1 + 2 * mean in_flight) * peak-EWMA latency * GPU
slowdown / weight``, latencies within 15 % of the fastest counting as equal, so a replica that is
slow, queued or saturated receives only what its peers are too busy to take.

Three rather than two: with four replicas and one of them slow, a pair holds the slow one half of
the time, and a busy moment of its partner hands it the call; of three, at least two are healthy
(benchmarks/fleet.py, scenarios 2 and 5). Still a random draw, so gateway processes that share
stale GPU readings do not all pick the same replica.

What must always hold: as ``PowerOfTwoChoices``; unknown GPU readings are neutral, never idle.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.base import ReplicaView
from policies.load import least_loaded_cost, least_loaded_costs
from policies.p2c import PowerOfTwoChoices
from policies.registry import register_balancer

CHOICES = 3


@register_balancer("least_loaded")
class LeastLoaded(PowerOfTwoChoices):
    """Best of ``CHOICES`` by ``least_loaded_costs``."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(least_loaded_cost, CHOICES)

    def costs(self, candidates: Sequence[ReplicaView], now: float) -> list[float]:
        return least_loaded_costs(candidates, now)
