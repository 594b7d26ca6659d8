"""RedisRolloutStore against a real redis-server on a free 127.0.0.1 port (stopped by pid): two
gateways share one rollout, an older rev never overwrites a newer one, and a Redis that is not
there is logged and tolerated."""

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

from gateway.config import ModelConfig, Rollout
from gateway.rollout.manager import RolloutManager
from gateway.rollout.store import RedisRolloutStore

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")

MODELS = {"m": ModelConfig(labels={"stable": 1, "canary": 2},
                           rollout=Rollout(canary="canary", steps=[10, 50, 100], step_s=30,
                                           min_requests=20))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def test_two_gateways_share_one_rollout(redis_url: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        a = RolloutManager(RedisRolloutStore(redis_url), clock, poll_s=1)
        b = RolloutManager(RedisRolloutStore(redis_url), clock, poll_s=1)
        for g in (a, b):
            g.configure(MODELS)
            await g.restore()
        for _ in range(25):
            a.observe("m", "canary", True, 0.01)
        clock.t += 31
        (t,) = await a.tick()
        assert t.kind == "step"
        (t,) = await b.tick()  # b's own canary saw nothing; it adopts a's step
        assert t.kind == "remote" and b.weights("m") == {"stable": 50.0, "canary": 50.0}
        await b.act("m", "pause")
        clock.t += 1
        (t,) = await a.tick()
        assert t.kind == "remote" and a.get("m").state == "paused"  # type: ignore[union-attr]
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_an_older_rev_never_overwrites_a_newer_one(redis_url: str) -> None:
    async def scenario() -> None:
        store = RedisRolloutStore(redis_url)
        assert await store.save("m", {"identity": "x", "rev": 5, "state": "paused"})
        assert not await store.save("m", {"identity": "x", "rev": 4, "state": "progressing"})
        assert (await store.load("m") or {})["state"] == "paused"
        assert await store.save("m", {"identity": "y", "rev": 1, "state": "progressing"})
        assert (await store.load("m") or {})["identity"] == "y"
        await store.close()

    asyncio.run(scenario())


def test_a_missing_redis_is_tolerated(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        store = RedisRolloutStore(f"redis://127.0.0.1:{free_port()}/0")
        assert await store.load("m") is None
        assert await store.save("m", {"identity": "x", "rev": 1}) is False
        mgr = RolloutManager(store, FakeClock())
        mgr.configure(MODELS)
        await mgr.restore()
        assert await mgr.tick() == []
        assert (await mgr.act("m", "pause"))["state"] == "paused"
        await mgr.close()

    asyncio.run(scenario())
    assert "cannot save rollout state" in caplog.text
