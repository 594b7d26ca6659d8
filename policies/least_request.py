"""``least_request``: power of two choices over calls in flight per unit of weight.

The classic P2C balancer (Mitzenmacher 2001; Envoy ``least_request``, Tower ``PendingRequests``):
it needs no latency or GPU data, so it is the right choice when replicas are alike and metrics are
absent. What must always hold: as ``PowerOfTwoChoices`` with ``load.in_flight_cost``.
"""

from __future__ import annotations

from policies.load import in_flight_cost
from policies.p2c import PowerOfTwoChoices
from policies.registry import register_balancer


@register_balancer("least_request")
class LeastRequest(PowerOfTwoChoices):
    """P2C over ``(in_flight + 1) / weight``."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(in_flight_cost)
