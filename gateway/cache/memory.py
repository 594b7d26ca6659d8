"""In-process exact-match tier: an LRU with a byte budget and a time-to-live per entry.

Every operation is O(1) amortised: an `OrderedDict` keeps recency (least recent first), a hit moves
its key to the end, and eviction pops from the front. Expiry is lazy: an expired entry is dropped
when it is read, or when it reaches the front of the LRU while room is being made.

What must always hold:
- `bytes_used` equals the sum of the sizes (key + `Entry.size_bytes()`) of the entries held, and
  never exceeds `max_bytes` after `put` returns;
- `get` never returns an entry past its expiry (time read from the injected clock);
- an entry whose size exceeds `max_entry_bytes` is never held (counted as `too_large`), so one
  huge answer cannot flush the whole tier.
Single-threaded by design: it lives on the event loop and never awaits.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.cache.entry import Entry


@dataclass(slots=True)
class _Slot:
    entry: Entry
    expires_at: float
    size: int


@dataclass(slots=True)
class MemoryStats:
    hits: int = 0
    misses: int = 0
    expired: int = 0
    evictions: int = 0
    too_large: int = 0
    inserts: int = 0


class MemoryLRU:
    """LRU + TTL + byte budget. `clock` returns monotonic seconds (a fake one in tests)."""

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_entry_bytes: int | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"MemoryLRU: max_bytes must be > 0, got {max_bytes}")
        if ttl_s <= 0:
            raise ValueError(f"MemoryLRU: ttl_s must be > 0, got {ttl_s}")
        if max_entry_bytes is not None and max_entry_bytes <= 0:
            raise ValueError(f"MemoryLRU: max_entry_bytes must be > 0, got {max_entry_bytes}")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.max_entry_bytes = min(max_bytes, max_entry_bytes) if max_entry_bytes else max_bytes
        self._clock = clock
        self._slots: OrderedDict[bytes, _Slot] = OrderedDict()
        self._bytes = 0
        self.stats = MemoryStats()

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: bytes) -> Entry | None:
        slot = self._slots.get(key)
        if slot is None:
            self.stats.misses += 1
            return None
        if self._clock() >= slot.expires_at:
            self._drop(key, slot)
            self.stats.expired += 1
            self.stats.misses += 1
            return None
        self._slots.move_to_end(key)
        self.stats.hits += 1
        return slot.entry

    def put(self, key: bytes, entry: Entry, ttl_s: float | None = None) -> bool:
        """Hold `entry` for `ttl_s` (default: the tier's TTL). False when it was not kept."""
        ttl = self.ttl_s if ttl_s is None else ttl_s
        size = len(key) + entry.size_bytes()
        old = self._slots.pop(key, None)
        if old is not None:
            self._bytes -= old.size  # replaced (or dropped, if the new one does not qualify)
        if size > self.max_entry_bytes:
            self.stats.too_large += 1
            return False
        if ttl <= 0:
            return False
        now = self._clock()
        self._make_room(size, now)
        self._slots[key] = _Slot(entry=entry, expires_at=now + ttl, size=size)
        self._bytes += size
        self.stats.inserts += 1
        return True

    def discard(self, key: bytes) -> None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._bytes -= slot.size

    def clear(self) -> None:
        self._slots.clear()
        self._bytes = 0

    def _drop(self, key: bytes, slot: _Slot) -> None:
        del self._slots[key]
        self._bytes -= slot.size

    def _make_room(self, size: int, now: float) -> None:
        # Pop from the least-recent end; expired entries found there leave without counting as
        # evictions (they were dead already).
        while self._slots and self._bytes + size > self.max_bytes:
            _key, slot = self._slots.popitem(last=False)
            self._bytes -= slot.size
            if now >= slot.expires_at:
                self.stats.expired += 1
            else:
                self.stats.evictions += 1
