"""Routing policies: pure, synchronous rankers of replicas, one module each.

Importing this package imports every balancer module, so each registers its name with
``policies.registry``; ``make_balancer(name)`` then builds one. Nothing here does I/O, awaits, reads
the environment, or imports TensorFlow.
"""

from __future__ import annotations

from policies import least_loaded, least_request, round_robin  # noqa: F401  (registration)
from policies.base import Balancer, PickContext, ReplicaView
from policies.registry import balancer_names, make_balancer, register_balancer

__all__ = [
    "Balancer",
    "PickContext",
    "ReplicaView",
    "balancer_names",
    "make_balancer",
    "register_balancer",
]
