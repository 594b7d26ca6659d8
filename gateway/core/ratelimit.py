"""A token bucket: at most `rate` events per second on average, `burst` at once.

Pure (the clock is passed in), so callers and tests decide what time is.
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._tokens = self.burst
        self._at = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend `n` tokens if there are that many; False (and nothing spent) otherwise."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False
