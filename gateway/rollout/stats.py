"""What a canary rollout measures during one step: per-arm calls, errors and latency, and how
often the canary's answers agree with the stable version's.

Latency lives in a fixed log-linear histogram (the layout of HdrHistogram, Gil Tene: every power
of two of microseconds is split into 8 linear sub-buckets), so memory is bounded whatever the
traffic and a quantile is within about 6% of the true value. Rates observed on small samples
are judged with the Wilson score interval (E. B. Wilson, "Probable inference, the law of
succession, and statistical inference", JASA 1927), which stays sensible near 0 and 1 where the
normal approximation does not.

Statistics travel between gateways as JSON (`to_json` / `from_json`) and add up (`merge`):
every process uses the same bucket layout, so the sum of several histograms is the histogram of
all their calls, and a fleet judges its pooled calls exactly as one process fed them all would.

What must always hold: recording an observation is O(1) and never allocates per call;
quantiles of an empty histogram are None, never 0; `from_json` accepts only what `to_json`
writes (anything else raises ValueError) and merging never loses or invents a call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

_SUB = 8  # linear sub-buckets per power of two
_SHIFT = 3  # log2(_SUB)
_MAX_US = (1 << 30) - 1  # about 18 minutes; slower calls count as that
_BUCKETS = _SUB + (30 - _SHIFT) * _SUB


def _index(us: int) -> int:
    if us < _SUB:
        return us
    e = us.bit_length() - 1
    return _SUB + (e - _SHIFT) * _SUB + ((us >> (e - _SHIFT)) - _SUB)


def _midpoint_us(idx: int) -> float:
    if idx < _SUB:
        return float(idx)
    e, sub = divmod(idx - _SUB, _SUB)
    e += _SHIFT
    width = 1 << (e - _SHIFT)
    return float((_SUB + sub) * width) + width / 2


class LatencyHistogram:
    """Bounded latency histogram with about 6% relative error."""

    __slots__ = ("counts", "n")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.n = 0

    def add(self, seconds: float) -> None:
        us = min(_MAX_US, max(0, int(seconds * 1e6)))
        self.counts[_index(us)] += 1
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile in seconds (nearest rank), or None when empty."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for idx, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return _midpoint_us(idx) / 1e6
        return _midpoint_us(_BUCKETS - 1) / 1e6  # unreachable: the counts sum to n

    def merge(self, other: LatencyHistogram) -> None:
        for idx, c in enumerate(other.counts):
            self.counts[idx] += c
        self.n += other.n

    def to_json(self) -> dict[str, int]:
        """Only the buckets that hold calls: {bucket index: count}."""
        return {str(i): c for i, c in enumerate(self.counts) if c}

    @classmethod
    def from_json(cls, d: Any) -> LatencyHistogram:
        if not isinstance(d, dict):
            raise ValueError("a latency histogram is an object")
        h = cls()
        for k, v in d.items():
            idx, c = int(k), int(v)
            if not 0 <= idx < _BUCKETS or c < 0:
                raise ValueError(f"latency bucket {k}={v} out of range")
            h.counts[idx] += c
            h.n += c
        return h


@dataclass(slots=True)
class ArmStats:
    """Calls, errors and latency of one arm (stable or canary) in the current step."""

    calls: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def observe(self, ok: bool, latency_s: float) -> None:
        self.calls += 1
        if not ok:
            self.errors += 1
        else:
            # Failed calls often fail fast; mixing them in would make a broken canary look quick.
            self.latency.add(latency_s)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None

    def p95(self) -> float | None:
        return self.latency.quantile(0.95)

    def p50(self) -> float | None:
        return self.latency.quantile(0.5)

    def merge(self, other: ArmStats) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.latency.merge(other.latency)

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "errors": self.errors, "latency": self.latency.to_json()}

    @classmethod
    def from_json(cls, d: Any) -> ArmStats:
        if not isinstance(d, dict):
            raise ValueError("arm statistics are an object")
        calls, errors = int(d["calls"]), int(d["errors"])
        if not 0 <= errors <= calls:
            raise ValueError(f"calls={calls} errors={errors}")
        return cls(calls, errors, LatencyHistogram.from_json(d["latency"]))


@dataclass(slots=True)
class RolloutStats:
    """Everything measured in the current step; reset when a step begins."""

    stable: ArmStats = field(default_factory=ArmStats)
    canary: ArmStats = field(default_factory=ArmStats)
    agreed: int = 0
    compared: int = 0

    def arm(self, arm: str) -> ArmStats:
        if arm == "stable":
            return self.stable
        if arm == "canary":
            return self.canary
        raise ValueError(f"unknown rollout arm {arm!r} (stable or canary)")

    def observe(self, arm: str, ok: bool, latency_s: float) -> None:
        self.arm(arm).observe(ok, latency_s)

    def observe_agreement(self, agreed: bool) -> None:
        self.compared += 1
        if agreed:
            self.agreed += 1

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def merge(self, other: RolloutStats) -> None:
        self.stable.merge(other.stable)
        self.canary.merge(other.canary)
        self.agreed += other.agreed
        self.compared += other.compared

    def to_json(self) -> dict[str, Any]:
        return {"stable": self.stable.to_json(), "canary": self.canary.to_json(),
                "agreed": self.agreed, "compared": self.compared}

    @classmethod
    def from_json(cls, d: Any) -> RolloutStats:
        """Raises ValueError (also for missing keys) on anything `to_json` does not write."""
        try:
            agreed, compared = int(d["agreed"]), int(d["compared"])
            if not 0 <= agreed <= compared:
                raise ValueError(f"agreed={agreed} compared={compared}")
            return cls(ArmStats.from_json(d["stable"]), ArmStats.from_json(d["canary"]),
                       agreed, compared)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not rollout statistics: {exc!r}") from exc


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for the default z)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
