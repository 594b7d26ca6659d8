"""Retry budget: retries may add at most a fixed fraction of the recent call rate.

After Finagle's RetryBudget: every call deposits `ratio` tokens and a retry withdraws one,
over a sliding window, plus a small floor of retries per second so a quiet gateway can still
retry. This caps the extra load retries put on a struggling fleet (retry storms).
"""

from __future__ import annotations

from collections.abc import Callable


class RetryBudget:
    def __init__(self, ratio: float, min_per_s: float, clock: Callable[[], float],
                 window_s: float = 10.0) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._clock = clock
        self._calls = 0.0
        self._retries = 0.0
        self._at = clock()

    def _decay(self) -> None:
        now = self._clock()
        dt = now - self._at
        if dt > 0:
            keep = max(0.0, 1.0 - dt / self.window_s)
            self._calls *= keep
            self._retries *= keep
            self._at = now

    def record_call(self) -> None:
        self._decay()  # deposits age too, or a quiet spell of no retries would forget them all
        self._calls += 1.0

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False when the budget is spent."""
        self._decay()
        allowed = self._calls * self.ratio + self.min_per_s * self.window_s
        if self._retries + 1.0 > allowed:
            return False
        self._retries += 1.0
        return True
