"""Replicas drained on purpose (spot preemption notices, node drains, TF Serving's missing
graceful shutdown): no new calls go to a drained replica, its in-flight calls finish.

With a Redis store the drained names live in one Redis hash, so every gateway on that Redis
drains the same replicas within `poll_s`; without one they live in this process.

What must always hold: a drain survives a config reload (it is re-applied to the new replica
set); a Redis outage keeps the last known drains, never drops them; this registry is the only
writer of `ReplicaState.draining`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.tasks import cancel_all, spawn
from gateway.fleet.replicas import ReplicaSet

log = logging.getLogger("infergate.drains")
KEY = "infergate:drains"


class DrainRegistry:
    def __init__(self, store: str, replicas: Callable[[], ReplicaSet], poll_s: float = 1.0,
                 timeout_s: float = 0.5) -> None:
        self._replicas = replicas
        self.poll_s = poll_s
        self.names: dict[str, float] = {}  # drained replica -> wall-clock time of the drain
        self._redis: aioredis.Redis | None = None
        if store.startswith(("redis://", "rediss://")):
            self._redis = aioredis.from_url(store, socket_timeout=timeout_s,
                                            socket_connect_timeout=timeout_s)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def shared(self) -> bool:
        return self._redis is not None

    async def start(self) -> None:
        if self._redis is not None:
            await self._sync()
            self._tasks.append(spawn(self._poll(), "drain-sync"))

    async def close(self) -> None:
        await cancel_all(self._tasks)
        if self._redis is not None:
            await self._redis.aclose()

    async def drain(self, name: str) -> None:
        await self._set(name, True)

    async def undrain(self, name: str) -> None:
        await self._set(name, False)

    async def _set(self, name: str, drained: bool) -> None:
        if self._redis is not None:
            try:
                if drained:
                    await self._redis.hset(KEY, name, str(time.time()))
                else:
                    await self._redis.hdel(KEY, name)
            except (TimeoutError, RedisError, OSError) as exc:
                # Applied here at once; other gateways pick it up when Redis is back only if
                # someone repeats it: say so.
                log.warning("drain of %s not shared through Redis: %s", name, exc)
        if drained:
            self.names.setdefault(name, time.time())
        else:
            self.names.pop(name, None)
        self.apply(self._replicas())

    def apply(self, reps: ReplicaSet) -> None:
        """Mark the drained replicas of `reps` (after a drain, a sync or a reload)."""
        changed = False
        for r in reps.all:
            want = r.name in self.names
            if r.draining != want:
                r.draining = want
                changed = True
                log.info("replica %s %s", r.name, "draining" if want else "back in rotation")
        if changed:
            reps.rebuild()

    async def _sync(self) -> None:
        assert self._redis is not None
        try:
            raw = await self._redis.hgetall(KEY)
        except (TimeoutError, RedisError, OSError) as exc:
            log.debug("drain sync from Redis failed, keeping the last known drains: %s", exc)
            return
        names: dict[str, float] = {}
        for k, v in raw.items():
            try:
                name = k.decode() if isinstance(k, bytes) else str(k)
                names[name] = float(v)
            except (UnicodeDecodeError, ValueError):
                continue
        self.names = names
        self.apply(self._replicas())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self._sync()
