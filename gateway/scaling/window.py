"""Sliding-window latency and throughput for scale signals: p95 and rps over the last N seconds.

Owns `SignalWindow`, fed by the gateway's request-completion hook. `observe()` sits on the request
path, so it is a handful of integer operations and no allocation except once per second.

Layout: a ring of `window_s` one-second slots; each slot holds its second, a request count and a
fixed log-linear histogram (HdrHistogram's layout: Tene, "HdrHistogram", 2012 -- each power of two
split into `sub_buckets` equal linear buckets). A slot whose second has left the window is reset on
its next write and ignored on read, so memory is bounded by window_s * buckets counters.

Always true:
- pure and single-threaded: the caller passes `now` (a monotonic clock in seconds, >= 0, never
  going back) and serialises calls (the event loop does);
- quantiles are exact up to the bucket width: relative error <= 1 / sub_buckets (6.25 % at 16)
  for latencies within [2**-7, 2**20) ms; smaller values land in the first bucket, larger ones in
  the last;
- an empty window has rps 0.0 (no traffic is zero load) and p95 None (no sample to report).
"""

from __future__ import annotations

import math

# Octave range: frexp exponents E_MIN..E_MAX cover values in [2**(E_MIN-1), 2**E_MAX) ms.
_E_MIN = -6
_E_MAX = 20
_TOP = math.ldexp(1.0, _E_MAX)


class SignalWindow:
    """Requests per second and latency quantiles over the last `window_s` seconds."""

    __slots__ = ("_n", "_sub", "_twice", "_nb", "_secs", "_totals", "_hists", "_started_at")

    def __init__(self, window_s: int = 60, *, sub_buckets: int = 16, started_at: float | None = None) -> None:
        """`started_at`: when the window began receiving (same clock as `now`); until `window_s`
        have passed, rps divides by the elapsed time instead of the full window."""
        if window_s < 1:
            raise ValueError(f"window_s: must be at least 1, got {window_s}")
        if sub_buckets < 1:
            raise ValueError(f"sub_buckets: must be at least 1, got {sub_buckets}")
        self._n = int(window_s)
        self._sub = int(sub_buckets)
        self._twice = 2 * self._sub
        self._nb = (_E_MAX - _E_MIN + 1) * self._sub
        self._secs: list[int] = [-1] * self._n
        self._totals: list[int] = [0] * self._n
        self._hists: list[list[int]] = [[] for _ in range(self._n)]
        self._started_at = started_at

    @property
    def window_s(self) -> int:
        return self._n

    def observe(self, latency_ms: float, now: float) -> None:
        """Count one completed request that took `latency_ms`."""
        sec = int(now)
        slot = sec % self._n
        if self._secs[slot] != sec:
            self._secs[slot] = sec
            self._totals[slot] = 0
            self._hists[slot] = [0] * self._nb
        self._totals[slot] += 1
        if 0.0 < latency_ms < _TOP:
            mantissa, exp = math.frexp(latency_ms)
            idx = (exp - _E_MIN) * self._sub + int((mantissa - 0.5) * self._twice)
            if idx < 0:
                idx = 0
        else:
            # Zero, negative and NaN land first; beyond the range, last.
            idx = self._nb - 1 if latency_ms >= _TOP else 0
        self._hists[slot][idx] += 1

    def _live(self, now: float) -> list[int]:
        sec = int(now)
        low = sec - self._n
        return [i for i, s in enumerate(self._secs) if low < s <= sec]

    def count(self, now: float) -> int:
        """Requests completed within the window ending at `now`."""
        return sum(self._totals[i] for i in self._live(now))

    def rps(self, now: float) -> float:
        """Completed requests per second over the window (0.0 when there were none)."""
        span = float(self._n)
        if self._started_at is not None:
            span = min(span, max(1.0, now - self._started_at))
        return self.count(now) / span

    def _bounds(self, idx: int) -> tuple[float, float]:
        exp = idx // self._sub + _E_MIN
        j = idx % self._sub
        scale = math.ldexp(1.0, exp)
        low = (0.5 + j / (2 * self._sub)) * scale
        high = (0.5 + (j + 1) / (2 * self._sub)) * scale
        return (0.0 if idx == 0 else low), high

    def quantile(self, q: float, now: float) -> float | None:
        """The q-quantile (0 < q <= 1) of latencies in the window, in ms; None when empty.

        Nearest-rank over the merged histogram, interpolated linearly inside the bucket."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q: must be in (0, 1], got {q}")
        live = self._live(now)
        total = sum(self._totals[i] for i in live)
        if total == 0:
            return None
        merged = [0] * self._nb
        for i in live:
            for idx, c in enumerate(self._hists[i]):
                if c:
                    merged[idx] += c
        rank = max(1, math.ceil(q * total))
        seen = 0
        for idx, c in enumerate(merged):
            if c and seen + c >= rank:
                low, high = self._bounds(idx)
                return low + (high - low) * (rank - seen) / c
            seen += c
        raise AssertionError("rank beyond histogram total")  # unreachable: totals match counts

    def p95_ms(self, now: float) -> float | None:
        """95th percentile latency in ms over the window; None when no request completed."""
        return self.quantile(0.95, now)

    def snapshot(self, now: float) -> tuple[int, float, dict[int, int]]:
        """(requests, rps, histogram as {bucket: count}) over the window: what one process
        publishes so that a fleet's windows can be merged (`merged_quantile`). Buckets of windows
        with the same `sub_buckets` line up, so sums of snapshots are the fleet's histogram."""
        hist: dict[int, int] = {}
        for i in self._live(now):
            for idx, c in enumerate(self._hists[i]):
                if c:
                    hist[idx] = hist.get(idx, 0) + c
        return self.count(now), self.rps(now), hist

    def merged_quantile(self, hist: dict[int, int], q: float) -> float | None:
        """The q-quantile of a histogram summed from snapshots (same layout as this window)."""
        total = sum(hist.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for idx in sorted(hist):
            c = hist[idx]
            if c and seen + c >= rank:
                low, high = self._bounds(idx)
                return low + (high - low) * (rank - seen) / c
            seen += c
        return None
