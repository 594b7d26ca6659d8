"""``least_loaded``: power of two choices over in-flight calls, peak-EWMA latency and GPU pressure.

The default balancer for GPU replicas: it is P2C (Mitzenmacher 2001) over
``load.least_loaded_cost`` = ``(in_flight + 1) * peak-EWMA latency * GPU slowdown / weight``, so a
replica that is slow, queued or saturated receives only what its peers are too busy to take.
What must always hold: as ``PowerOfTwoChoices``; unknown GPU readings are neutral, never idle.
"""

from __future__ import annotations

from policies.load import least_loaded_cost
from policies.p2c import PowerOfTwoChoices
from policies.registry import register_balancer


@register_balancer("least_loaded")
class LeastLoaded(PowerOfTwoChoices):
    """P2C over ``least_loaded_cost``."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(least_loaded_cost)
