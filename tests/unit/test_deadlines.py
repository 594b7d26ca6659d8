"""gateway.core.deadlines.DeadlineTimer: one timer for many deadlines, armed at the earliest."""

from __future__ import annotations

import asyncio
import time

from gateway.core.deadlines import SLACK_S, DeadlineTimer


class Owner:
    """Pending deadlines; `check` expires the due ones and names the next, as a connection does."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}
        self.expired: list[tuple[str, float]] = []  # (name, lateness: now - deadline)
        self.checks = 0

    def check(self, now: float) -> float | None:
        self.checks += 1
        for name, at in sorted(self.pending.items(), key=lambda kv: kv[1]):
            if at <= now:
                del self.pending[name]
                self.expired.append((name, time.monotonic() - at))
        return min(self.pending.values(), default=None)


def test_expires_each_deadline_not_before_it_and_in_order() -> None:
    async def main() -> Owner:
        owner = Owner()
        timer = DeadlineTimer(asyncio.get_running_loop(), owner.check)
        now = time.monotonic()
        for name, delay in (("late", 0.12), ("early", 0.03), ("middle", 0.07)):
            owner.pending[name] = now + delay
            timer.arm(now + delay)
        await asyncio.sleep(0.25)
        return owner

    owner = asyncio.run(main())
    assert [n for n, _ in owner.expired] == ["early", "middle", "late"]
    assert all(lateness >= -SLACK_S for _, lateness in owner.expired)
    assert not owner.pending


def test_a_later_deadline_does_not_rearm_and_answered_calls_are_not_expired() -> None:
    async def main() -> Owner:
        owner = Owner()
        timer = DeadlineTimer(asyncio.get_running_loop(), owner.check)
        start = time.monotonic()
        # A call answered in time: its deadline is dropped before the timer fires.
        owner.pending["answered"] = start + 0.05
        timer.arm(start + 0.05)
        owner.pending.pop("answered")
        # Later deadlines leave the armed timer alone; the owner names them when it fires.
        owner.pending["next"] = start + 0.1
        timer.arm(start + 0.1)
        await asyncio.sleep(0.2)
        return owner

    owner = asyncio.run(main())
    assert [n for n, _ in owner.expired] == ["next"]
    assert owner.checks == 2  # at 0.05 (nothing due, re-armed for "next"), then at 0.1


def test_cancel_stops_the_timer() -> None:
    async def main() -> Owner:
        owner = Owner()
        timer = DeadlineTimer(asyncio.get_running_loop(), owner.check)
        owner.pending["x"] = time.monotonic() + 0.02
        timer.arm(owner.pending["x"])
        timer.cancel()
        await asyncio.sleep(0.08)
        return owner

    owner = asyncio.run(main())
    assert owner.checks == 0 and owner.expired == []
