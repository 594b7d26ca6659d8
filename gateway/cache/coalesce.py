"""Single-flight: identical calls that are in flight at the same time share one upstream call.

The first caller for a key (the leader) runs its own `fn` in its own task; callers arriving while
it runs (followers) wait on a shared future. This is the "singleflight" pattern of Go's
golang.org/x/sync/singleflight and of groupcache, adapted to asyncio cancellation.

Outcomes, and what must always hold:
- success: every follower gets the leader's result object (shared, so treat it as immutable);
- the leader's call raises: every follower gets that same exception, so one failure upstream is
  one failure, not N retries hammering a struggling replica. Exceptions are shared objects too;
- the leader is cancelled (its client went away, its deadline passed): followers are NOT
  cancelled and never hang. They wake, and one of them becomes the new leader and runs its own
  `fn` (same key, so the same request); the rest follow it;
- a follower that is cancelled leaves alone: it waits through `asyncio.shield`, so its
  cancellation never reaches the shared future or the leader.
- the in-flight table holds a key only while its leader runs; nothing leaks on any outcome.
The caller that got `shared=False` is the one that should store the result in a cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

T = TypeVar("T")


class _LeaderCancelled(Exception):
    """Set on the shared future when the leader is cancelled: followers must elect a new one."""


@dataclass(slots=True)
class CoalesceStats:
    leaders: int = 0  # calls that ran fn
    followers: int = 0  # times a call joined someone else's fn (result or error)
    cancelled_leaders: int = 0  # leaders cancelled mid-call (their followers elect a new one)


class Coalescer:
    def __init__(self) -> None:
        self._in_flight: dict[bytes, asyncio.Future[Any]] = {}
        self.stats = CoalesceStats()

    def __len__(self) -> int:
        return len(self._in_flight)

    async def run(self, key: bytes, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(result, shared). `shared` is True when another caller's `fn` produced the result."""
        while True:
            fut = self._in_flight.get(key)
            if fut is None:
                return await self._lead(key, fn), False
            self.stats.followers += 1
            try:
                result = await asyncio.shield(fut)
            except _LeaderCancelled:
                continue  # the leader went away; try to lead (or follow the one who does)
            return cast(T, result), True

    async def _lead(self, key: bytes, fn: Callable[[], Awaitable[T]]) -> T:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = fut
        self.stats.leaders += 1
        try:
            result = await fn()
        except asyncio.CancelledError:
            self._settle(fut, _LeaderCancelled())
            self.stats.cancelled_leaders += 1
            raise
        except BaseException as exc:
            self._settle(fut, exc)
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            if self._in_flight.get(key) is fut:
                del self._in_flight[key]

    @staticmethod
    def _settle(fut: asyncio.Future[Any], exc: BaseException) -> None:
        fut.set_exception(exc)
        # Mark the exception as retrieved: with no followers nobody reads it, and asyncio would
        # log "Future exception was never retrieved" when the future is collected.
        fut.exception()
