"""Live traffic per model for the admin API and dashboard: calls per split arm and per version,
errors, RPS and p95 latency over the last minute.

Per model, a ring of one-second slots; `observe` touches one slot (a few dict increments), so it
is cheap enough for the completion path. Model names are the bounded metric labels
(Gateway.model_label), so the table cannot grow without bound.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.scaling import SignalWindow

WINDOW_S = 60


class _Slot:
    __slots__ = ("second", "arms", "versions", "calls", "errors")

    def __init__(self) -> None:
        self.second = -1
        self.arms: dict[str, int] = {}
        self.versions: dict[str, int] = {}
        self.calls = 0
        self.errors = 0


class ModelTraffic:
    def __init__(self, now: float) -> None:
        self.slots = [_Slot() for _ in range(WINDOW_S)]
        self.latency = SignalWindow(WINDOW_S, started_at=now)

    def observe(self, arm: str, version: str, ok: bool, latency_s: float, now: float) -> None:
        sec = int(now)
        slot = self.slots[sec % WINDOW_S]
        if slot.second != sec:
            slot.second, slot.arms, slot.versions, slot.calls, slot.errors = sec, {}, {}, 0, 0
        slot.calls += 1
        if not ok:
            slot.errors += 1
        if arm:
            slot.arms[arm] = slot.arms.get(arm, 0) + 1
        if version:
            slot.versions[version] = slot.versions.get(version, 0) + 1
        self.latency.observe(latency_s * 1000.0, now)

    def to_json(self, now: float) -> dict[str, Any]:
        lo = int(now) - WINDOW_S
        arms: dict[str, int] = {}
        versions: dict[str, int] = {}
        calls = errors = 0
        for s in self.slots:
            if s.second <= lo:
                continue
            calls += s.calls
            errors += s.errors
            for k, v in s.arms.items():
                arms[k] = arms.get(k, 0) + v
            for k, v in s.versions.items():
                versions[k] = versions.get(k, 0) + v
        p95 = self.latency.p95_ms(now)
        return {"arms": arms, "versions": versions, "calls": calls, "errors": errors,
                "rps": round(calls / WINDOW_S, 3), "p95_ms": None if p95 is None else round(p95, 3)}


class TrafficStats:
    def __init__(self) -> None:
        self.models: dict[str, ModelTraffic] = {}

    def observe(self, model: str, arm: str, version: str, ok: bool, latency_s: float,
                now: float) -> None:
        """One answered call; `now` is its completion time (time.monotonic())."""
        t = self.models.get(model)
        if t is None:
            t = self.models[model] = ModelTraffic(now)
        t.observe(arm, version, ok, latency_s, now)

    def to_json(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"models": {m: t.to_json(now) for m, t in sorted(self.models.items())}}
