"""`PredictionCache`: the exact-match cache the request pipeline talks to.

Tiers: an in-process `MemoryLRU`, then optionally a shared `RedisTier`. A lookup reads memory,
then Redis; a Redis hit is promoted into memory for no longer than it has left in Redis, so a
promoted copy never outlives the shared one. A store writes memory at once and queues the Redis
write in the background. A `Coalescer` lets identical concurrent misses share one upstream call.

Intended use in the pipeline:

    entry = await cache.lookup(key)
    if entry is None:
        answer, shared = await cache.coalesce(key, call_upstream)
        if not shared:                      # the leader stores; followers got the same answer
            cache.store(key, entry_of(answer))

What must always hold:
- only successes are kept (`Entry.is_success`); anything else passed to `store` is refused;
- `lookup`, `store` and `stats` never raise because of Redis; with Redis down the cache is
  memory-only and comes back to two tiers by itself (see `RedisTier`);
- an entry larger than `max_entry_bytes` is kept by neither tier.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from gateway.cache.circuit import CircuitState
from gateway.cache.coalesce import Coalescer
from gateway.cache.entry import Entry
from gateway.cache.memory import MemoryLRU
from gateway.cache.redis_tier import RedisTier, Spawn

T = TypeVar("T")

MEMORY_STORE = "memory"
DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_MAX_ENTRY_BYTES = 4 << 20
_CIRCUIT_GAUGE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


@dataclass(slots=True)
class TierCounts:
    lookups: int = 0
    hits_memory: int = 0
    hits_redis: int = 0
    misses: int = 0
    stores: int = 0
    not_cacheable: int = 0  # store() refused: not a success
    too_large: int = 0  # store() refused: over max_entry_bytes


class PredictionCache:
    """Memory LRU + optional Redis + single-flight, built from plain configuration values.

    `store` is "memory" or a redis://, rediss:// or unix:// URL (ValueError when malformed).
    `spawn` starts background tasks; it is required with a Redis store.
    """

    def __init__(
        self,
        store: str = MEMORY_STORE,
        *,
        ttl_s: float = 60.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        spawn: Spawn | None = None,
        clock: Callable[[], float] = time.monotonic,
        key_prefix: str = "infergate:cache:",
        redis_get_timeout_s: float = 0.05,
        redis_backoff_s: float = 1.0,
        redis_max_backoff_s: float = 30.0,
    ) -> None:
        self.store_url = store
        self.ttl_s = ttl_s
        self.max_entry_bytes = max_entry_bytes
        self.memory = MemoryLRU(max_bytes, ttl_s, clock, max_entry_bytes=max_entry_bytes)
        self.redis: RedisTier | None = None
        if store != MEMORY_STORE:
            if spawn is None:
                raise ValueError("PredictionCache: a Redis store needs `spawn` for its background writer")
            self.redis = RedisTier(
                store,
                ttl_s,
                key_prefix,
                spawn=spawn,
                get_timeout_s=redis_get_timeout_s,
                backoff_s=redis_backoff_s,
                max_backoff_s=redis_max_backoff_s,
                clock=clock,
            )
            self.store_url = self.redis.url  # password redacted
        self.coalescer = Coalescer()
        self.counts = TierCounts()

    async def lookup(self, key: bytes) -> Entry | None:
        """The cached entry for `key`, from memory or Redis, or None."""
        self.counts.lookups += 1
        entry = self.memory.get(key)
        if entry is not None:
            self.counts.hits_memory += 1
            return entry
        if self.redis is not None:
            found = await self.redis.get(key)
            if found is not None:
                entry, remaining_s = found
                self.memory.put(key, entry, ttl_s=min(remaining_s, self.ttl_s))
                self.counts.hits_redis += 1
                return entry
        self.counts.misses += 1
        return None

    def store(self, key: bytes, entry: Entry, ttl_s: float | None = None) -> bool:
        """Keep a successful answer: memory now, Redis in the background. False when refused."""
        if not entry.is_success:
            self.counts.not_cacheable += 1
            return False
        if len(key) + entry.size_bytes() > self.max_entry_bytes:
            self.counts.too_large += 1
            return False
        self.counts.stores += 1
        self.memory.put(key, entry, ttl_s)
        if self.redis is not None:
            self.redis.set(key, entry, ttl_s)
        return True

    async def coalesce(self, key: bytes, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run `fn` once for all concurrent callers of `key`; see `Coalescer.run`."""
        return await self.coalescer.run(key, fn)

    def stats(self) -> dict[str, int]:
        """Flat integer counters and gauges for metrics and the admin API (names are stable).

        `redis_circuit_state` is 0 closed, 1 half-open, 2 open; the `redis_*` names are present
        only with a Redis store (`redis_enabled` says which).
        """
        out: dict[str, int] = asdict(self.counts)
        out.update({f"memory_{name}": value for name, value in asdict(self.memory.stats).items()})
        out["memory_bytes"] = self.memory.bytes_used
        out["memory_entries"] = len(self.memory)
        out.update({f"coalesce_{name}": value for name, value in asdict(self.coalescer.stats).items()})
        out["coalesce_in_flight"] = len(self.coalescer)
        out["redis_enabled"] = 0 if self.redis is None else 1
        if self.redis is not None:
            out.update({f"redis_{name}": value for name, value in asdict(self.redis.stats).items()})
            out["redis_circuit_state"] = _CIRCUIT_GAUGE[self.redis.circuit_state]
            out["redis_circuit_opened"] = self.redis.circuit.opened_total
            out["redis_pending_sets"] = self.redis.pending_sets
        return out

    async def aclose(self) -> None:
        """Close the Redis tier (pending background writes are dropped)."""
        if self.redis is not None:
            await self.redis.aclose()
