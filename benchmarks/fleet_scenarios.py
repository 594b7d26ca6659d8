"""The five fleet scenarios as pure models: how long one call takes on one replica, when a stall
pauses it, and what GPU utilisation the replica reports.

Every replica is modelled as a GPU server with `slots` calls executing at once (a batch) and a
FIFO queue in front of them; a call's service time is fixed when it starts executing:
1. `equal`: four equal replicas, `base_s` per call.
2. `slow`: replica 0 is `slow_factor` (4x) slower for the whole run.
3. `stall`: replica 0 stops working for `stall_s` (1 s) every `stall_every_s` (10 s); calls
   executing or queued there wait the stall out.
4. `load`: every replica's service time grows with its own calls executing (contention), and
   its reported utilisation with its busy slots; the gateway scrapes it every 2 s.
5. `turns-slow`: replica 0 becomes `slow_factor` slower halfway through the run.
Utilisation is the time-weighted mean of busy slots / slots (exponential, `tau_s`), which is what
DCGM's DCGM_FI_DEV_GPU_UTIL averages over its sample period.

What must always hold: a model's answers depend only on its arguments (no clock, no randomness),
so the replica server and the unit tests see the same numbers; scenario time 0 is the start of
a measured run (warm-up calls arrive at negative times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

SCENARIO_KEYS = ("equal", "slow", "stall", "load", "turns-slow")


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    number: int
    title: str
    base_s: float = 0.010  # service time of one call on an unloaded, healthy replica
    slots: int = 8  # calls executing at once; more wait in FIFO order
    slow_factor: float = 1.0  # replica 0's service-time multiplier...
    slow_after_s: float = -math.inf  # ...from this scenario time on
    stall_s: float = 0.0  # replica 0 pauses this long...
    stall_every_s: float = 10.0  # ...once per this period...
    stall_first_s: float = 0.0  # ...the first pause starting here
    contention: float = 0.0  # service time grows by this fraction per other call executing

    def service_s(self, replica: int, t: float, executing: int) -> float:
        """Work one call needs when it starts at scenario time `t` on `replica`, `executing`
        being that replica's calls executing, this one included (queued calls use no GPU)."""
        s = self.base_s * (1.0 + self.contention * max(0, executing - 1))
        if replica == 0 and t >= self.slow_after_s:
            s *= self.slow_factor
        return s

    def finish_s(self, replica: int, start: float, service: float) -> float:
        """Scenario time at which a call started at `start` needing `service` seconds of work
        ends: work stops during replica 0's stalls and resumes after them."""
        end = start + service
        if replica != 0 or self.stall_s <= 0.0:
            return end
        every, length = self.stall_every_s, self.stall_s
        k = math.floor((start - self.stall_first_s) / every)
        while True:
            a = self.stall_first_s + k * every
            if a >= end:
                return end
            b = a + length
            if b > start:
                end += b - max(a, start)  # the part of the stall after the start pauses the work
            k += 1

    def stalled(self, replica: int, t: float) -> bool:
        """Whether `replica` is inside a stall at scenario time `t`."""
        if replica != 0 or self.stall_s <= 0.0:
            return False
        return (t - self.stall_first_s) % self.stall_every_s < self.stall_s


def build(key: str, duration_s: float, base_s: float = 0.010, slots: int = 8) -> Scenario:
    """The scenario `key` for a measured run of `duration_s` seconds: the stall falls in the
    first third of the run (one per run) and `turns-slow` turns at half time."""
    if key == "equal":
        sc = Scenario(key, 1, "equal replicas")
    elif key == "slow":
        sc = Scenario(key, 2, "one replica 4x slower", slow_factor=4.0)
    elif key == "stall":
        sc = Scenario(key, 3, "one replica stalls 1 s every 10 s", stall_s=1.0,
                      stall_every_s=10.0, stall_first_s=min(2.0, duration_s / 3))
    elif key == "load":
        sc = Scenario(key, 4, "load-dependent replicas", contention=0.15)
    elif key == "turns-slow":
        sc = Scenario(key, 5, "one replica turns 4x slower halfway", slow_factor=4.0,
                      slow_after_s=duration_s / 2)
    else:
        raise ValueError(f"unknown scenario {key!r}; known: {', '.join(SCENARIO_KEYS)}")
    return replace(sc, base_s=base_s, slots=slots)


class BusyMeter:
    """Exponentially time-weighted mean of a piecewise-constant level (busy slots / slots).

    `set(now, level)` records that the level changed at `now`; `read(now)` is the mean so far,
    each past moment weighted by exp(-age / tau_s). Starts at 0 (an idle card).
    """

    __slots__ = ("_tau_s", "_mean", "_level", "_at")

    def __init__(self, tau_s: float = 1.0) -> None:
        if tau_s <= 0:
            raise ValueError("tau_s must be > 0")
        self._tau_s = tau_s
        self._mean = 0.0
        self._level = 0.0
        self._at: float | None = None

    def _advance(self, now: float) -> None:
        if self._at is not None and now > self._at:
            decay = math.exp(-(now - self._at) / self._tau_s)
            self._mean = self._level + (self._mean - self._level) * decay
        if self._at is None or now > self._at:
            self._at = now

    def set(self, now: float, level: float) -> None:
        self._advance(now)
        self._level = level

    def read(self, now: float) -> float:
        self._advance(now)
        return self._mean
