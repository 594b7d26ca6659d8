"""One timer per upstream connection for the deadlines of all its calls.

Arming a loop timer for every call and cancelling it when the answer comes is a timer handle
allocated, inserted and removed per call; profiles of the data plane showed it among the larger
costs of a forwarded call. Deadlines are long next to answers (seconds against a millisecond),
so a connection keeps a single timer, armed at the earliest deadline it knows of; a call with a
later deadline leaves it alone. When it fires, the owner expires what is due and names its next
deadline, and the timer is armed again for that. A connection that keeps answering in time thus
arms its timer about once per deadline period, not once per call.

What must always hold: a call is failed no earlier than its deadline (less `SLACK_S`, the
granularity of the loop's clock) and no later than its deadline plus one loop iteration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# The loop's timers have millisecond resolution and may fire up to that much before the
# monotonic deadline; a call that far from its deadline counts as due.
SLACK_S = 0.002


class DeadlineTimer:
    """`check(now)` expires every call due at `now` and returns the earliest deadline still
    pending (a `time.monotonic()` value), or None when nothing is pending."""

    __slots__ = ("_loop", "_check", "_handle", "_at")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 check: Callable[[float], float | None]) -> None:
        self._loop = loop
        self._check = check
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def arm(self, deadline: float) -> None:
        """Make sure the timer fires no later than `deadline`."""
        if self._handle is not None:
            if self._at <= deadline:
                return
            self._handle.cancel()
        self._at = deadline
        self._handle = self._loop.call_later(max(0.0, deadline - time.monotonic()), self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        nxt = self._check(time.monotonic() + SLACK_S)
        if nxt is not None:
            self.arm(nxt)
