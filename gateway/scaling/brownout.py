"""Brownout levels per pool: how much of a saturated pool's traffic should go to the models'
fallback tiers before anything is shed.

A pool is saturated while a signal that measures its serving headroom is past its up
threshold: p95 latency, queue depth or GPU utilisation (the autoscale policy's `up`; CPU and rps
against capacity say more about cost than about answering in time). The level (0..1, a
fraction of each model's `brownout.max_share`) rises step by step while the pool stays
saturated, reaching 1 after the policy's `window_up_s`, and falls while it is not, reaching 0
after `window_down_s`: the same stabilisation windows as the scale decision, so brownout and
scale-up relieve the same overload on the same clock.

What must always hold: pure (time comes in as arguments); an unknown signal is not saturation
and not relief (the level holds); the level stays within [0, 1].
"""

from __future__ import annotations

from gateway.config.autoscale import PoolScalePolicy
from gateway.scaling.controller import Signals


def saturated(sig: Signals, policy: PoolScalePolicy) -> bool | None:
    """True past an up threshold, False when every known signal is below, None if none known."""
    known = False
    for value, limit in ((sig.p95_latency_ms, policy.up.p95_latency_ms),
                         (sig.queue_depth, policy.up.queue_depth),
                         (sig.gpu_util, policy.up.gpu_util)):
        if value is None:
            continue
        known = True
        if value > limit:
            return True
    return False if known else None


class BrownoutLevels:
    def __init__(self) -> None:
        self.levels: dict[str, float] = {}
        self._at: dict[str, float] = {}

    def update(self, pool: str, state: bool | None, policy: PoolScalePolicy, now: float) -> float:
        """Move `pool`'s level for the time since its last update; the new level."""
        level = self.levels.get(pool, 0.0)
        last = self._at.get(pool, now)
        self._at[pool] = now
        dt = max(0.0, now - last)
        if state is True:
            level = min(1.0, level + dt / max(policy.window_up_s, 1e-3))
        elif state is False:
            level = max(0.0, level - dt / max(policy.window_down_s, 1e-3))
        self.levels[pool] = level
        return level

    def level(self, pool: str) -> float:
        return self.levels.get(pool, 0.0)
