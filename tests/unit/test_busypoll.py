"""gateway.transport.busypoll.BusyPoller: the loop polls without sleeping while calls are in flight and for
a window after the last one, then sleeps again."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import ConfigError, parse_config
from gateway.transport.busypoll import BusyPoller


def test_polls_while_busy_then_stops_once_the_window_has_passed() -> None:
    async def main() -> None:
        busy = [True]
        poller = BusyPoller(asyncio.get_running_loop(), 0.05, lambda: busy[0])
        poller.kick()
        assert poller.running
        await asyncio.sleep(0.15)
        assert poller.running  # calls in flight: still polling well past the window
        busy[0] = False
        await asyncio.sleep(0.2)
        assert not poller.running  # idle for longer than the window: the loop sleeps again
        poller.kick()  # the next call starts it again
        assert poller.running

    asyncio.run(main())


class Counting(BusyPoller):
    __slots__ = ("spins",)

    def _spin(self) -> None:
        self.spins += 1
        super()._spin()


def test_polling_turns_the_loop_over_instead_of_sleeping() -> None:
    async def main() -> tuple[int, bool]:
        poller = Counting(asyncio.get_running_loop(), 0.05, lambda: False)
        poller.spins = 0
        poller.kick()
        # A sleeping loop would wake once for this timer; a polling one turns over all along.
        await asyncio.sleep(0.02)
        during = poller.spins
        await asyncio.sleep(0.1)
        return during, poller.running

    during, still_running = asyncio.run(main())
    assert during > 20
    assert not still_running


def test_config_bounds() -> None:
    assert parse_config({"listen": {"busy_poll_us": 500}}).listen.busy_poll_us == 500
    assert parse_config({}).listen.busy_poll_us == 0  # off by default
    with pytest.raises(ConfigError):
        parse_config({"listen": {"busy_poll_us": -1}})
