"""gateway.cache.coalesce: one upstream call per burst of identical calls, shared errors, and
cancellation that never strands followers."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from gateway.cache.coalesce import Coalescer


class Upstream:
    """Counts calls; each call waits until the test opens the gate."""

    def __init__(self, result: object = "answer", error: BaseException | None = None) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.result = result
        self.error = error

    async def __call__(self) -> object:
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def settle(co: Coalescer, followers: int) -> None:
    """Let the loop run until `followers` callers have joined (bounded number of turns)."""
    for _ in range(1000):
        if co.stats.followers >= followers:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {co.stats.followers} of {followers} followers joined")


def test_hundred_identical_calls_make_one_upstream_call() -> None:
    async def main() -> None:
        co = Coalescer()
        up = Upstream()
        tasks = [asyncio.get_running_loop().create_task(co.run(b"k", up)) for _ in range(100)]
        await settle(co, 99)
        up.gate.set()
        results = await asyncio.gather(*tasks)
        assert up.calls == 1
        assert all(r == "answer" for r, _ in results)
        assert sum(1 for _, shared in results if not shared) == 1
        assert co.stats.leaders == 1 and co.stats.followers == 99
        assert len(co) == 0

    asyncio.run(main())


def test_different_keys_are_not_coalesced_and_later_calls_run_again() -> None:
    async def main() -> None:
        co = Coalescer()
        up = Upstream()
        up.gate.set()
        (_, s1), (_, s2) = await asyncio.gather(co.run(b"a", up), co.run(b"b", up))
        assert up.calls == 2 and not s1 and not s2
        await co.run(b"a", up)
        assert up.calls == 3

    asyncio.run(main())


def test_leader_error_reaches_every_follower_once() -> None:
    async def main() -> None:
        co = Coalescer()
        boom = RuntimeError("replica unavailable")
        up = Upstream(error=boom)
        tasks = [asyncio.get_running_loop().create_task(co.run(b"k", up)) for _ in range(100)]
        await settle(co, 99)
        up.gate.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert up.calls == 1
        assert all(o is boom for o in outcomes)
        assert len(co) == 0

    asyncio.run(main())


def test_cancelled_leader_hands_over_to_a_follower() -> None:
    async def main() -> None:
        co = Coalescer()
        up = Upstream()
        loop = asyncio.get_running_loop()
        leader = loop.create_task(co.run(b"k", up))
        await asyncio.sleep(0)
        followers = [loop.create_task(co.run(b"k", up)) for _ in range(10)]
        await settle(co, 10)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        await settle(co, 10 + 9)  # one follower now leads, the nine others joined it
        up.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*followers), timeout=30)
        assert all(r == "answer" for r, _ in results)
        assert up.calls == 2  # the leader's call died with it; one follower ran its own
        assert sum(1 for _, shared in results if not shared) == 1
        assert co.stats.cancelled_leaders == 1
        assert len(co) == 0

    asyncio.run(main())


def test_cancelled_follower_leaves_alone() -> None:
    async def main() -> None:
        co = Coalescer()
        up = Upstream()
        loop = asyncio.get_running_loop()
        leader = loop.create_task(co.run(b"k", up))
        await asyncio.sleep(0)
        quitter = loop.create_task(co.run(b"k", up))
        stayer = loop.create_task(co.run(b"k", up))
        await settle(co, 2)
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        up.gate.set()
        assert await leader == ("answer", False)
        assert await stayer == ("answer", True)
        assert up.calls == 1

    asyncio.run(main())


def test_a_lone_failing_leader_leaves_no_unretrieved_future_behind() -> None:
    async def main() -> list[dict[str, Any]]:
        reports: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reports.append(ctx))
        co = Coalescer()
        up = Upstream(error=ValueError("bad input"))
        up.gate.set()
        with pytest.raises(ValueError):
            await co.run(b"k", up)
        gc.collect()
        await asyncio.sleep(0)
        return reports

    assert asyncio.run(main()) == []
