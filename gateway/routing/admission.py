"""Admission: the gateway-wide in-flight limit, priorities, and the bounded queue for calls whose
replicas are all at their in-flight cap.

The queue is served by priority class (critical, then standard, then sheddable) and, within a
class, by weighted fair queueing between tenants (start-time fair queueing: Goyal, Vin and
Cheng, 1996): each queued call gets a virtual finish time of max(virtual now, its tenant's last
finish) + 1 / weight, and a freed slot goes to the smallest. A tenant that floods only pushes
its own calls back. When the queue is full, the call that would be served last gives way to a
new one that would be served before it (it is shed instead), so a light tenant is not shed
because a heavy one filled the queue.

What must always hold:
- this object is the only writer of the in-flight and queued counts; every increment has its
  decrement in a `finally`;
- past the limit a call is shed at once (429 / RESOURCE_EXHAUSTED) unless it is `critical`
  (which may use up to twice the limit); `sheddable` calls are shed from 80 % of it;
- a queued call waits at most until its deadline; while calls are queued, new ones queue
  behind them (no barging); a call granted a slot on replicas it cannot use keeps its place.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Sequence
from typing import Protocol, TypeVar

from gateway.core.errors import DeadlineExceeded, Overloaded
from gateway.core.metrics import Metrics


class Slotted(Protocol):
    @property
    def in_flight(self) -> int: ...


R = TypeVar("R", bound=Slotted)
CLASS_RANK = {"critical": 0, "standard": 1, "sheddable": 2}
# (class rank, virtual finish time, arrival, grant, tenant)
_Waiter = tuple[int, float, int, "asyncio.Future[None]", str]


class Admission:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.in_flight = 0  # calls out at replicas
        self.queued = 0  # calls waiting for a replica below its in-flight cap
        self._heap: list[_Waiter] = []
        self._seq = 0
        self._vtime = 0.0
        self._finish: dict[str, float] = {}  # tenant -> virtual finish of its last queued call

    def check(self, priority: str, limit: int) -> None:
        """Shed a call at the door when the gateway holds too many (raises Overloaded)."""
        n = self.in_flight
        if n >= limit:
            if priority != "critical" or n >= limit * 2:
                self.metrics.shed.labels("queue_full").inc()
                raise Overloaded("Too many requests in flight at the gateway")
        elif n >= limit * 0.8 and priority == "sheddable":
            self.metrics.shed.labels("sheddable").inc()
            raise Overloaded("Shedding low-priority request under load")

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1
        if self.queued:
            self._grant_next()

    def _grant_next(self) -> None:
        heap = self._heap
        while heap:
            _, vft, _, fut, _ = heapq.heappop(heap)
            if fut.done():
                continue  # gave up (deadline), or was shed
            self._vtime = max(self._vtime, vft)
            fut.set_result(None)
            return

    async def wait_for_slot(self, ranked: Sequence[R], cap: int, max_queue: int,
                            deadline: float, tenant: str = "", weight: float = 1.0,
                            priority: str = "standard") -> list[R]:
        """The replicas of `ranked` below `cap`, waiting in the fair queue until one is. While
        calls are queued a new one queues too (no barging past them)."""
        open_ = [r for r in ranked if r.in_flight < cap]
        if open_ and not self.queued:
            return open_
        rank = CLASS_RANK.get(priority, 1)
        vft = max(self._vtime, self._finish.get(tenant, 0.0)) + 1.0 / weight
        if self.queued >= max_queue and not self._shed_last_for(rank, vft):
            self.metrics.shed.labels("replicas_full").inc()
            raise Overloaded("All replicas are at their in-flight limit and the queue is full")
        self._finish[tenant] = vft
        if len(self._finish) > 4 * max_queue + 64:  # tenants are few; unknown names are bounded
            self._finish = {k: v for k, v in self._finish.items() if v > self._vtime}
        loop = asyncio.get_running_loop()
        self._seq += 1
        seq = self._seq
        self.queued += 1
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (rank, vft, seq, fut, tenant))
        used = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded("Deadline Exceeded while queued")
                try:
                    await asyncio.wait_for(asyncio.shield(fut), remaining)
                except TimeoutError:
                    raise DeadlineExceeded("Deadline Exceeded while queued") from None
                open_ = [r for r in ranked if r.in_flight < cap]
                if open_:
                    used = True
                    return open_
                # The freed slot is on a replica this call cannot use: keep the place in the
                # queue; the next completion grants again.
                fut = loop.create_future()
                heapq.heappush(self._heap, (rank, vft, seq, fut, tenant))
        finally:
            self.queued -= 1
            if not fut.done():
                fut.cancel()
            elif not used and not fut.cancelled() and fut.exception() is None and self.queued:
                self._grant_next()  # granted as the deadline passed: the slot goes on

    def _shed_last_for(self, rank: int, vft: float) -> bool:
        """The queue is full: shed the queued call that would be served last if the new one
        would be served before it. True when a place was made."""
        live = [w for w in self._heap if not w[3].done()]
        if not live:
            return False
        last = max(live, key=lambda w: (w[0], w[1], w[2]))
        if (last[0], last[1]) <= (rank, vft):
            return False
        last[3].set_exception(Overloaded("Shed from the full queue for a call served before it"))
        self.metrics.shed.labels("fair_share").inc()
        return True
