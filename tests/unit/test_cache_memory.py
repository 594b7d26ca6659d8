"""gateway.cache.memory: LRU order, TTL under a fake clock, the byte budget, too-large entries."""

from __future__ import annotations

import pytest

from gateway.cache.entry import ENTRY_OVERHEAD_BYTES, Entry
from gateway.cache.memory import MemoryLRU


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(n: int, fill: bytes = b"x") -> Entry:
    return Entry(status=200, body=fill * n)


def cost(key: bytes, e: Entry) -> int:
    return len(key) + len(e.body) + ENTRY_OVERHEAD_BYTES


def test_hit_miss_and_counters() -> None:
    lru = MemoryLRU(1 << 20, 10.0, FakeClock())
    assert lru.get(b"k") is None
    e = entry(10)
    assert lru.put(b"k", e)
    assert lru.get(b"k") is e
    assert (lru.stats.hits, lru.stats.misses, lru.stats.inserts) == (1, 1, 1)
    assert lru.bytes_used == cost(b"k", e)


def test_ttl_expires_entries_with_the_injected_clock() -> None:
    clock = FakeClock()
    lru = MemoryLRU(1 << 20, 10.0, clock)
    lru.put(b"a", entry(1))
    lru.put(b"b", entry(1), ttl_s=30.0)
    clock.now += 9.999
    assert lru.get(b"a") is not None
    clock.now += 0.001
    assert lru.get(b"a") is None
    assert lru.stats.expired == 1
    assert lru.get(b"b") is not None
    clock.now += 20.0
    assert lru.get(b"b") is None
    assert len(lru) == 0 and lru.bytes_used == 0


def test_byte_budget_evicts_least_recently_used() -> None:
    e = entry(100)
    budget = 3 * cost(b"k0", e)
    lru = MemoryLRU(budget, 60.0, FakeClock())
    for i in range(3):
        lru.put(f"k{i}".encode(), e)
    assert lru.get(b"k0") is e  # k0 is now most recent; k1 is the LRU victim
    lru.put(b"k3", e)
    assert lru.get(b"k1") is None
    assert all(lru.get(k) is e for k in (b"k0", b"k2", b"k3"))
    assert lru.stats.evictions == 1
    assert lru.bytes_used == budget
    assert lru.bytes_used <= lru.max_bytes


def test_budget_holds_under_many_mixed_puts() -> None:
    lru = MemoryLRU(10_000, 60.0, FakeClock(), max_entry_bytes=3_000)
    for i in range(500):
        lru.put(str(i % 37).encode(), entry((i * 131) % 2_900))
        assert lru.bytes_used <= 10_000
    # The byte count matches what is held.
    assert lru.bytes_used == sum(cost(k, s.entry) for k, s in lru._slots.items())


def test_too_large_entries_are_not_cached_and_do_not_flush_others() -> None:
    lru = MemoryLRU(100_000, 60.0, FakeClock(), max_entry_bytes=1_000)
    lru.put(b"small", entry(10))
    assert not lru.put(b"big", entry(1_000))
    assert lru.stats.too_large == 1
    assert lru.get(b"big") is None
    assert lru.get(b"small") is not None


def test_replacing_a_key_keeps_the_count_exact() -> None:
    lru = MemoryLRU(1 << 20, 60.0, FakeClock())
    lru.put(b"k", entry(10))
    lru.put(b"k", entry(500))
    assert len(lru) == 1
    assert lru.bytes_used == cost(b"k", entry(500))
    lru.discard(b"k")
    assert lru.bytes_used == 0


def test_expired_entries_at_the_lru_end_are_not_counted_as_evictions() -> None:
    clock = FakeClock()
    e = entry(100)
    lru = MemoryLRU(2 * cost(b"k0", e), 5.0, clock)
    lru.put(b"k0", e)
    clock.now += 10
    lru.put(b"k1", e)
    lru.put(b"k2", e)
    assert lru.stats.evictions == 0 and lru.stats.expired == 1


@pytest.mark.parametrize("kw", [dict(max_bytes=0, ttl_s=1.0), dict(max_bytes=1, ttl_s=0.0)])
def test_bad_parameters_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MemoryLRU(int(kw["max_bytes"]), kw["ttl_s"], FakeClock())
