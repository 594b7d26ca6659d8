"""The retry budget under the load shape of a replica loss: a quiet spell, then a burst of retries.

The rolling-restart drill can lose calls when a replica dies more than a budget window (10 s)
after the last retry: the budget then allows only its floor (min_per_s x window) plus the
deposits made since that moment, not the deposits of the whole last window. This file pins the
intended behaviour with a fake clock (the budget is a pure component: time is passed in).
"""

from __future__ import annotations

from gateway.routing.budget import RetryBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def retries_granted(budget: RetryBudget, clock: FakeClock, *, rate: float, seconds: float,
                    start: float, retry_every: int) -> int:
    """Record `rate` calls a second for `seconds` from `start`; every `retry_every`-th call asks
    for one retry. How many were granted."""
    granted = 0
    n = int(rate * seconds)
    for i in range(n):
        clock.now = start + i / rate
        budget.record_call()
        if retry_every and i % retry_every == 0 and budget.try_withdraw():
            granted += 1
    return granted


def test_steady_retries_within_ratio_are_granted() -> None:
    """Control: retries that are always under 20 % of calls are all granted."""
    clock = FakeClock()
    budget = RetryBudget(0.2, 10.0, clock)
    assert retries_granted(budget, clock, rate=400, seconds=30, start=0.0, retry_every=10) == 1200


def test_budget_is_not_a_free_for_all() -> None:
    """Control: when every call retries for a long time, the budget does cap them."""
    clock = FakeClock()
    budget = RetryBudget(0.2, 10.0, clock)
    granted = retries_granted(budget, clock, rate=400, seconds=30, start=0.0, retry_every=1)
    assert granted < 0.3 * 400 * 30


def test_calls_of_the_last_window_count_after_a_quiet_spell() -> None:
    """400 calls/s for 12 s with no retry, then one replica of two dies: half of the next
    second's calls need a retry (200, i.e. 5 % of the last 10 s of calls, far under 20 %)."""
    clock = FakeClock()
    budget = RetryBudget(0.2, 10.0, clock)
    retries_granted(budget, clock, rate=400, seconds=12, start=0.0, retry_every=0)
    assert retries_granted(budget, clock, rate=400, seconds=1, start=12.0, retry_every=2) == 200
