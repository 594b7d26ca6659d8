"""gateway.cache.tiered: PredictionCache on the memory tier, and its construction rules.
(The Redis tier is exercised against a real redis-server in tests/integration/test_cache_redis.py.)"""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache import Entry, PredictionCache, cache_key
from gateway.core.tasks import spawn


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


OK = Entry.make(200, {"content-type": "application/json"}, b'{"predictions": [2.5, 3.0]}')
KEY = cache_key("half_plus_two", 1, "serving_default", "predict", "rest", b'{"instances": [1.0, 2.0]}')


def test_miss_store_hit_replays_the_same_bytes() -> None:
    async def main() -> None:
        cache = PredictionCache("memory", ttl_s=10, max_bytes=1 << 20, max_entry_bytes=1 << 16)
        assert await cache.lookup(KEY) is None
        assert cache.store(KEY, OK)
        hit = await cache.lookup(KEY)
        assert hit is not None
        assert hit.body == OK.body and hit.header_dict() == {"content-type": "application/json"}
        stats = cache.stats()
        assert stats["redis_enabled"] == 0
        assert (stats["lookups"], stats["hits_memory"], stats["misses"], stats["stores"]) == (2, 1, 1, 1)
        assert "redis_hits" not in stats
        await cache.aclose()

    asyncio.run(main())


def test_only_successes_are_stored() -> None:
    async def main() -> None:
        cache = PredictionCache("memory")
        assert not cache.store(KEY, Entry(status=503, body=b'{"error": "busy"}'))
        assert not cache.store(KEY, Entry(status=14, body=b""))  # gRPC UNAVAILABLE
        assert await cache.lookup(KEY) is None
        assert cache.store(KEY, Entry(status=0, body=b"\x0a\x00"))  # gRPC OK
        assert await cache.lookup(KEY) is not None
        assert cache.stats()["not_cacheable"] == 2

    asyncio.run(main())


def test_too_large_entries_are_refused() -> None:
    async def main() -> None:
        cache = PredictionCache("memory", max_bytes=1 << 20, max_entry_bytes=1000)
        assert not cache.store(KEY, Entry(200, b"x" * 1000))
        assert await cache.lookup(KEY) is None
        assert cache.stats()["too_large"] == 1

    asyncio.run(main())


def test_ttl_uses_the_injected_clock_and_per_call_override() -> None:
    async def main() -> None:
        clock = FakeClock()
        cache = PredictionCache("memory", ttl_s=10, clock=clock)
        cache.store(b"a", OK)
        cache.store(b"b", OK, ttl_s=1)
        clock.now = 5
        assert await cache.lookup(b"a") is not None
        assert await cache.lookup(b"b") is None
        clock.now = 10
        assert await cache.lookup(b"a") is None

    asyncio.run(main())


def test_coalesce_is_exposed_on_the_cache() -> None:
    async def main() -> None:
        cache = PredictionCache("memory")
        calls = 0
        gate = asyncio.Event()

        async def upstream() -> Entry:
            nonlocal calls
            calls += 1
            await gate.wait()
            return OK

        tasks = [spawn(cache.coalesce(KEY, upstream), "t") for _ in range(20)]
        for _ in range(100):
            await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*tasks)
        assert calls == 1 and sum(not shared for _, shared in results) == 1
        assert cache.stats()["coalesce_followers"] == 19

    asyncio.run(main())


@pytest.mark.parametrize(
    "url,needle",
    [
        ("http://127.0.0.1:6379", "redis://"),
        ("redis://127.0.0.1:notaport/0", "not a valid Redis URL"),
        ("redis://127.0.0.1:99999/0", "not a valid Redis URL"),
        ("redis:///0", "names no host"),
        ("redis://127.0.0.1:6379/zero", "must be a number"),
        ("unix://", "socket path"),
        ("memroy", "expected 'memory'"),
    ],
)
def test_malformed_store_urls_fail_at_construction(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        PredictionCache(url, spawn=spawn)


def test_errors_do_not_echo_a_password() -> None:
    with pytest.raises(ValueError) as info:
        PredictionCache("redis://user:s3cret@127.0.0.1:bad/0", spawn=spawn)
    assert "s3cret" not in str(info.value)


def test_a_redis_store_needs_spawn() -> None:
    with pytest.raises(ValueError, match="spawn"):
        PredictionCache("redis://127.0.0.1:6379/0")
