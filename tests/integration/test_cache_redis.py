"""PredictionCache against a real redis-server: a shared hit between two gateways, a Redis that
dies mid-run (memory keeps working, nothing raises), a Redis that comes back (the tier recovers
by itself), a Redis that accepts connections but never answers, and foreign values in Redis.

Each test starts its own redis-server on a free 127.0.0.1 port and stops it by pid."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from gateway.cache import Entry, PredictionCache, cache_key, encode_entry
from gateway.core.tasks import spawn

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]

ENTRY = Entry.make(200, {"content-type": "application/json"}, b'{"predictions": [2.5, 3.0, 4.5]}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


def key(i: int) -> bytes:
    return cache_key(
        "half_plus_two", 1, "serving_default", "predict", "rest", f'{{"instances": [{i}.0]}}'.encode()
    )


async def flushed(cache: PredictionCache) -> None:
    """Wait (bounded) until the background writer has sent everything queued."""
    assert cache.redis is not None
    for _ in range(200):
        if (
            cache.redis.pending_sets == 0
            and cache.stats()["redis_sets"] + cache.stats()["redis_set_errors"] > 0
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"writer did not flush: {cache.stats()}")


def make(url: str, **kw: float) -> PredictionCache:
    return PredictionCache(url, ttl_s=kw.pop("ttl_s", 60.0), spawn=spawn, **kw)  # type: ignore[arg-type]


def test_two_gateways_share_a_hit_through_redis(redis_server: RedisServer) -> None:
    async def main() -> None:
        a, b = make(redis_server.url), make(redis_server.url)
        try:
            assert await a.lookup(key(1)) is None
            assert a.store(key(1), ENTRY)
            await flushed(a)
            hit = await b.lookup(key(1))
            assert hit == ENTRY  # status, headers and body, byte for byte
            assert b.stats()["hits_redis"] == 1
            assert await b.lookup(key(1)) == ENTRY  # promoted into b's memory
            assert b.stats()["hits_memory"] == 1
            assert await b.lookup(key(2)) is None
            assert b.stats()["redis_misses"] == 1
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())


def test_promoted_copy_never_outlives_the_shared_one(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = make(redis_server.url)
        clock_now = [0.0]
        b = PredictionCache(redis_server.url, ttl_s=60.0, spawn=spawn, clock=lambda: clock_now[0])
        try:
            a.store(key(1), ENTRY, ttl_s=5.0)
            await flushed(a)
            assert await b.lookup(key(1)) == ENTRY
            slot = b.memory._slots[key(1)]
            assert 0.0 < slot.expires_at <= 5.0
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())


def test_foreign_values_in_redis_are_misses(redis_server: RedisServer) -> None:
    async def main() -> None:
        cache = make(redis_server.url)
        direct = aioredis.Redis.from_url(redis_server.url)
        try:
            await direct.set(b"infergate:cache:" + key(1).hex().encode(), b"\x80\x04pickle?")
            assert await cache.lookup(key(1)) is None
            stats = cache.stats()
            assert stats["redis_malformed"] == 1 and stats["redis_errors"] == 0
            assert stats["redis_circuit_state"] == 0  # closed
        finally:
            await direct.aclose()
            await cache.aclose()

    asyncio.run(main())


def test_redis_dies_mid_run_then_comes_back(redis_server: RedisServer) -> None:
    async def main() -> None:
        cache = make(redis_server.url, redis_backoff_s=0.1, redis_max_backoff_s=0.4)
        try:
            cache.store(key(0), ENTRY)
            await flushed(cache)
            redis_server.kill()

            # Redis is gone: nothing raises, memory still answers, misses stay misses.
            for i in range(1, 60):
                assert cache.store(key(i), ENTRY)
                assert await cache.lookup(key(i)) == ENTRY
                assert await cache.lookup(key(10_000 + i)) is None
                await asyncio.sleep(0.005)
            stats = cache.stats()
            assert stats["redis_errors"] >= 1
            assert stats["redis_circuit_opened"] >= 1
            assert stats["redis_skipped_open"] >= 1  # the open circuit spared later calls

            redis_server.start()  # same port, empty data
            direct = aioredis.Redis.from_url(redis_server.url)
            try:
                await direct.set(
                    b"infergate:cache:" + key(500).hex().encode(), encode_entry(ENTRY), px=60_000
                )
                recovered = False
                for _ in range(200):  # bounded: 200 x 50 ms
                    if await cache.lookup(key(500)) == ENTRY:  # read through Redis again
                        recovered = True
                        break
                    await asyncio.sleep(0.05)
                assert recovered, cache.stats()
                assert cache.stats()["redis_circuit_state"] == 0  # closed

                # Writes flow again too.
                cache.store(key(501), ENTRY)
                for _ in range(200):
                    if await direct.exists(b"infergate:cache:" + key(501).hex().encode()):
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError(f"write did not reach the restarted Redis: {cache.stats()}")
            finally:
                await direct.aclose()
        finally:
            await cache.aclose()

    asyncio.run(main())


def test_unreachable_redis_at_start_degrades_to_memory() -> None:
    async def main() -> None:
        cache = make(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
        try:
            for i in range(10):
                assert await cache.lookup(key(i)) is None
                cache.store(key(i), ENTRY)
                assert await cache.lookup(key(i)) == ENTRY
            stats = cache.stats()
            assert stats["redis_errors"] >= 3 and stats["redis_circuit_state"] != 0
        finally:
            await cache.aclose()

    asyncio.run(main())


def test_silent_redis_cannot_stall_lookups() -> None:
    """A peer that accepts TCP but never answers: every lookup ends at the tier's deadline."""

    async def main(port: int) -> None:
        cache = make(f"redis://127.0.0.1:{port}/0")
        try:
            for i in range(5):
                assert await asyncio.wait_for(cache.lookup(key(i)), timeout=30) is None
            stats = cache.stats()
            assert stats["redis_errors"] == 3  # three deadlines, then the circuit opened
            assert stats["redis_skipped_open"] == 2
        finally:
            await cache.aclose()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes handshakes; nobody ever reads or writes
        asyncio.run(main(listener.getsockname()[1]))
