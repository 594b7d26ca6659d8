"""Admission: the gateway-wide in-flight limit, priorities, and the bounded queue for calls whose
replicas are all at their in-flight cap.

What must always hold:
- this object is the only writer of the in-flight and queued counts; every increment has its
  decrement in a `finally`;
- past the limit a call is shed at once (429 / RESOURCE_EXHAUSTED) unless it is `critical`
  (which may use up to twice the limit); `sheddable` calls are shed from 80 % of it;
- a queued call waits at most until its deadline; every freed slot wakes the waiters, which
  re-check (the ranking they were given decides who is eligible).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from gateway.core.errors import DeadlineExceeded, Overloaded
from gateway.core.metrics import Metrics


class Slotted(Protocol):
    @property
    def in_flight(self) -> int: ...


R = TypeVar("R", bound=Slotted)


class Admission:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.in_flight = 0  # calls out at replicas
        self.queued = 0  # calls waiting for a replica below its in-flight cap
        self._slot_freed = asyncio.Event()  # replaced on every wake-up; waiters re-check

    def check(self, headers: Mapping[str, str], limit: int) -> None:
        """Shed a call at the door when the gateway holds too many (raises Overloaded)."""
        n = self.in_flight
        if n >= limit:
            if headers.get("x-priority", "standard") != "critical" or n >= limit * 2:
                self.metrics.shed.labels("queue_full").inc()
                raise Overloaded("Too many requests in flight at the gateway")
        elif n >= limit * 0.8 and headers.get("x-priority") == "sheddable":
            self.metrics.shed.labels("sheddable").inc()
            raise Overloaded("Shedding low-priority request under load")

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1
        if self.queued:
            ev, self._slot_freed = self._slot_freed, asyncio.Event()
            ev.set()

    async def wait_for_slot(self, ranked: Sequence[R], cap: int, max_queue: int,
                            deadline: float) -> list[R]:
        """The replicas of `ranked` below `cap`, waiting in the bounded queue until one is."""
        open_ = [r for r in ranked if r.in_flight < cap]
        if open_:
            return open_
        if self.queued >= max_queue:
            self.metrics.shed.labels("replicas_full").inc()
            raise Overloaded("All replicas are at their in-flight limit and the queue is full")
        self.queued += 1
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded("Deadline Exceeded while queued")
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), remaining)
                except TimeoutError:
                    continue
                open_ = [r for r in ranked if r.in_flight < cap]
                if open_:
                    return open_
        finally:
            self.queued -= 1
