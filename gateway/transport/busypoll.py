"""Busy polling: keep the event loop from sleeping while calls are in flight, and for a short
window after the last one (`listen.busy_poll_us`, off by default).

On a virtual machine every sleep of an idle process in epoll_wait ends with a wake-up through
the hypervisor, and the caches it comes back to are cold: at concurrency 1 that costs more than
the gateway's own work per call. With busy polling the loop keeps asking the kernel for events
with a zero timeout instead of sleeping, so an answer from a replica, or the next request of a
keep-alive client, is seen as soon as it lands. The price is a core kept busy while calls are
in flight and for `busy_poll_us` after the last one; under load the loop never idles anyway and
the cost disappears. HAProxy's `busy-polling` option answers the same problem the same way.

What must always hold: polling stops at most one loop iteration after the window has passed
with no call in flight, so an idle gateway sleeps as before; `kick` is cheap enough to call on
every call start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class BusyPoller:
    __slots__ = ("_loop", "_window_s", "_busy", "_until", "_running")

    def __init__(self, loop: asyncio.AbstractEventLoop, window_s: float,
                 busy: Callable[[], bool]) -> None:
        self._loop = loop
        self._window_s = window_s
        self._busy = busy  # whether calls are in flight now
        self._until = 0.0
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def kick(self) -> None:
        """A call started: poll without sleeping from now on, until the window has passed with
        nothing in flight."""
        if not self._running:
            self._running = True
            self._until = time.monotonic() + self._window_s
            self._loop.call_soon(self._spin)

    def _spin(self) -> None:
        # A ready callback makes the loop poll with a zero timeout on its next iteration; this
        # one schedules itself again until the window has passed with nothing in flight.
        now = time.monotonic()
        if self._busy():
            self._until = now + self._window_s
        if now < self._until:
            self._loop.call_soon(self._spin)
        else:
            self._running = False
