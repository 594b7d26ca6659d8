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


class Gcra:
    """The generic cell rate algorithm (ATM Forum TM 4.0; as in Redis-cell and Envoy's global
    limits): `rate` calls per second sustained, `burst` at once. Local state, per key."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    def take(self, key: str, rate: float, burst: float, now: float) -> float:
        """0.0 when allowed (and counted); else the seconds until a call would be."""
        t = 1.0 / rate
        tau = max(burst, 1.0) * t
        tat = max(self._tat.get(key, now), now)
        new = tat + t
        allow_at = new - tau
        if now < allow_at:
            return allow_at - now
        self._tat[key] = new
        return 0.0

    def __len__(self) -> int:
        return len(self._tat)

    def forget(self, keep: set[str]) -> None:
        for k in [k for k in self._tat if k not in keep]:
            del self._tat[k]


# The same algorithm in Redis, one script call per decision, on Redis' own clock so that every
# gateway agrees. Returns {1, "0"} when allowed, {0, "<seconds to wait>"} when not.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local period = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + period
local allow_at = new - tau
if now < allow_at then return {0, tostring(allow_at - now)} end
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000)
return {1, '0'}
"""
