"""Contracts shared by every routing policy.

A policy is a pure, synchronous function of (candidate replicas, observed load, a key) that
returns replicas in order of preference. Policies never do I/O and never await; time and
randomness arrive as arguments (``PickContext``) so tests can pin them.

What must always hold:
- a policy never invents a replica: it returns a permutation of (a subset of) its candidates;
- a policy never mutates the views it is handed; the gateway's health checker and completion
  hook are the only writers of replica state (DESIGN.md, principle 3).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class ReplicaView(Protocol):
    """What a policy may read of one replica. Implemented by the gateway's replica state."""

    @property
    def name(self) -> str: ...

    @property
    def pool(self) -> str: ...

    @property
    def weight(self) -> float:
        """Relative capacity, > 0 (config `weight`, default 1)."""
        ...

    @property
    def in_flight(self) -> int:
        """Calls sent to this replica by this gateway and not yet answered."""
        ...

    def latency_s(self, now: float) -> float:
        """Peak-EWMA round-trip estimate in seconds at time `now` (0.0 when nothing observed)."""
        ...

    @property
    def gpu_util(self) -> float | None:
        """GPU utilisation 0..1 from the replica's metrics, None when unknown or stale."""
        ...

    @property
    def gpu_mem_frac(self) -> float | None:
        """GPU memory in use 0..1, None when unknown or stale."""
        ...


@dataclass(slots=True)
class PickContext:
    """Everything a policy may depend on besides the candidates. Read-only to policies; not a
    frozen dataclass only because one is built per call and a frozen __init__ costs 3x."""

    rng: random.Random
    now: float  # monotonic seconds
    key: str | None = None  # sticky / hash key when the call carries one


class Balancer(Protocol):
    """Ranks candidates; the first is the preferred target, the rest are retry order."""

    def rank(self, candidates: Sequence[ReplicaView], ctx: PickContext) -> list[ReplicaView]: ...
