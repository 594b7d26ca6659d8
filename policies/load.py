"""Load measurement: the peak-EWMA latency estimator and the small cost functions balancers rank by.

Measuring load and choosing a replica are separate pieces (Tower's ``load`` vs ``balance::p2c``):
every cost here is one small function ``(view, now) -> float`` where lower is better, and the
power-of-two-choices picker in ``policies/p2c.py`` is generic over it. A new metric is one function.

What must always hold:
- costs are finite, >= 0, and never mutate the view;
- "no data" is never "idle": an unmeasured replica's latency reads 0.0 (``ReplicaView.latency_s``),
  which the latency costs turn into Finagle's probe-then-penalty rule (see ``peak_ewma_cost``), and
  an unknown GPU reading counts as ``GPU_NEUTRAL`` (mid-scale), not as 0;
- ``PeakEwma`` decays by elapsed time, not by number of observations, so its meaning does not
  depend on the request rate;
- ``least_loaded_costs`` of a single candidate equals ``least_loaded_cost`` of it: the fleet terms
  (mean calls in flight, fastest latency, mean utilisation) only matter between candidates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from policies.base import ReplicaView

__all__ = [
    "GPU_EXCESS",
    "GPU_NEUTRAL",
    "LATENCY_BAND",
    "NO_DATA_PENALTY",
    "QUEUE_OFFSET",
    "PeakEwma",
    "gpu_cost",
    "in_flight_cost",
    "least_loaded_cost",
    "least_loaded_costs",
    "peak_ewma_cost",
]

# Added to the cost of a replica that has calls in flight but no latency sample yet, so that it gets
# one probing call at a time until its first answer arrives (Finagle PeakEwma's `Penalty`).
NO_DATA_PENALTY = 1.0e9

# An unknown (None or stale) GPU reading is taken as this utilisation / memory fraction: a neutral
# prior, halfway between idle and saturated. Counting it as 0 would send every call to the replica
# whose exporter is down.
GPU_NEUTRAL = 0.5

# Utilisation is clamped below 1 so that the queueing factor stays finite (1 / (1 - 0.99) = 100).
_UTIL_CAP = 0.99
_MEM_CAP = 0.99
# Memory pressure matters much less than compute pressure until the card is nearly full (TF
# preallocates most of the memory anyway), so its queueing-shaped term is scaled down.
_MEM_WEIGHT = 0.1

# How least_loaded compares candidates with each other (``least_loaded_costs``); the figures come
# from benchmarks/fleet.py (docs/benchmarks.md, "Fleet"):
# - each candidate's calls in flight are counted on top of this many times the candidates' mean;
QUEUE_OFFSET = 2.0
# - latencies within this factor of the fastest candidate's count as equal to it (peak EWMA keeps
#   every jitter spike, so a 10 % difference is noise; acting on it moved calls to and fro);
LATENCY_BAND = 1.15
# - a GPU reading above the candidates' mean counts this fraction of its excess (readings are
#   scraped every few seconds and mostly stale), one below the mean counts as the mean (an idle
#   card earns no credit: a slow replica is idle because it is avoided).
GPU_EXCESS = 0.5

# An observed estimate never reads as exactly 0.0, which would mean "no data".
_OBSERVED_FLOOR_S = 1.0e-6


class PeakEwma:
    """Peak-sensitive, time-decayed moving average of round-trip time (Finagle ``PeakEwma``,
    Tower ``load::peak_ewma``).

    ``observe(rtt, now)``: an observation above the current estimate replaces it at once (react to a
    slow replica immediately); otherwise the estimate moves toward the observation with weight
    ``1 - exp(-elapsed / tau)``, elapsed being the time since the previous observation.
    ``value(now)``: the estimate decayed toward zero since the last observation with the same time
    constant, as Tower and Finagle do on every read. A replica that was slow and then stopped getting
    traffic thus becomes attractive again after a few tau, gets a probe, and is re-measured.

    Before the first observation ``value`` returns ``default_s`` (0.0 unless told otherwise, which is
    what ``ReplicaView.latency_s`` promises for "nothing observed"; a Tower-style deployment may pass
    a default RTT instead).
    """

    __slots__ = ("_tau_s", "_default_s", "_estimate_s", "_at", "_observed")

    def __init__(self, tau_s: float = 10.0, default_s: float = 0.0) -> None:
        if not tau_s > 0.0 or math.isinf(tau_s):
            raise ValueError(f"tau_s must be a positive finite number of seconds, got {tau_s!r}")
        if not default_s >= 0.0 or math.isinf(default_s):
            raise ValueError(f"default_s must be a finite number >= 0, got {default_s!r}")
        self._tau_s = tau_s
        self._default_s = default_s
        self._estimate_s = 0.0
        self._at = 0.0
        self._observed = False

    @property
    def tau_s(self) -> float:
        return self._tau_s

    @property
    def observed(self) -> bool:
        """Whether at least one round trip has been recorded."""
        return self._observed

    def observe(self, rtt_s: float, now: float) -> None:
        """Record one round trip of ``rtt_s`` seconds that completed at monotonic time ``now``."""
        if not rtt_s >= 0.0 or math.isinf(rtt_s):  # also rejects NaN
            raise ValueError(f"rtt_s must be a finite number >= 0, got {rtt_s!r}")
        if not self._observed:
            self._estimate_s = rtt_s
            self._at = now
            self._observed = True
            return
        # Completions may be reported slightly out of order; never decay backwards.
        elapsed = now - self._at
        decay = math.exp(-elapsed / self._tau_s) if elapsed > 0.0 else 1.0
        current = self._estimate_s * decay
        if rtt_s > current:
            self._estimate_s = rtt_s
        else:
            self._estimate_s = current + rtt_s * (1.0 - decay)
        if now > self._at:
            self._at = now

    def at_least(self, rtt_s: float, now: float) -> None:
        """Record that a round trip started ``rtt_s`` seconds before ``now`` had not completed
        (a call cancelled while waiting: the losing copy of a hedge). Its latency is at least
        ``rtt_s``: the estimate rises to it when it is higher (the peak rule) and is otherwise left
        alone, since a lower bound says nothing about how fast the replica is."""
        if not rtt_s >= 0.0 or math.isinf(rtt_s):
            raise ValueError(f"rtt_s must be a finite number >= 0, got {rtt_s!r}")
        if rtt_s > self.value(now) or not self._observed:
            self.observe(rtt_s, now)

    def value(self, now: float) -> float:
        """The estimate in seconds at monotonic time ``now``; reading does not change it."""
        if not self._observed:
            return self._default_s
        elapsed = now - self._at
        if elapsed <= 0.0:
            return self._estimate_s
        return max(self._estimate_s * math.exp(-elapsed / self._tau_s), _OBSERVED_FLOOR_S)


def in_flight_cost(view: ReplicaView, now: float) -> float:
    """Outstanding calls per unit of capacity: ``(in_flight + 1) / weight``.

    The +1 makes idle replicas compare by weight (Envoy's weighted least-request divides the weight
    by ``active_requests + 1`` for the same reason); between equal weights the order is that of
    ``in_flight / weight``.
    """
    return (view.in_flight + 1) / view.weight


def peak_ewma_cost(view: ReplicaView, now: float) -> float:
    """Expected wait of one more call: ``(in_flight + 1) * latency`` (Tower / Finagle peak EWMA).

    A replica with no latency sample (``latency_s`` reads 0.0) costs 0 while it has nothing in
    flight, so it gets a probing call, and ``NO_DATA_PENALTY + in_flight`` once it does, so it gets
    no second call before the first one has measured it (Finagle's rule).
    """
    latency = view.latency_s(now)
    pending = view.in_flight
    if latency <= 0.0:
        return 0.0 if pending == 0 else NO_DATA_PENALTY + pending
    return (pending + 1) * latency


def gpu_cost(view: ReplicaView, now: float) -> float:
    """Multiplicative slowdown >= 1 expected from the replica's GPU pressure.

    ``1 / (1 - util)`` is the M/M/1 mean-response-time factor at utilisation ``util`` (Kleinrock,
    Queueing Systems vol. 1, 1975): 1.11 at 0.1, 2 at 0.5, 10 at 0.9, 100 at the 0.99 cap. Memory adds
    ``1 + 0.1 * mem / (1 - mem)``: negligible until the card is nearly full, 1.9 at 0.9, 10.9 at 0.99.
    Unknown readings count as ``GPU_NEUTRAL``, never as idle.
    """
    util = view.gpu_util
    mem = view.gpu_mem_frac
    u = GPU_NEUTRAL if util is None else min(max(util, 0.0), _UTIL_CAP)
    m = GPU_NEUTRAL if mem is None else min(max(mem, 0.0), _MEM_CAP)
    return (1.0 + _MEM_WEIGHT * m / (1.0 - m)) / (1.0 - u)


def least_loaded_cost(view: ReplicaView, now: float) -> float:
    """``least_loaded``'s cost of one replica judged alone: ``peak_ewma_cost * gpu_cost / weight``
    (``least_loaded_costs`` compares candidates against their fleet's means).

    In words: the time one more call is expected to wait here (calls in flight, plus this one, times
    the peak-EWMA round trip), stretched by how saturated the GPU is, per unit of configured capacity.
    Consequences the tests pin: a replica at >= 0.9 utilisation costs ~9x a peer at 0.1 with the same
    latency and queue, and a replica 50 ms slower than a 1 ms peer costs ~50x, so under P2C each
    receives only the calls its peers are too busy to take.
    """
    return peak_ewma_cost(view, now) * gpu_cost(view, now) / view.weight


def least_loaded_costs(candidates: Sequence[ReplicaView], now: float) -> list[float]:
    """What ``least_loaded`` minimises, for every candidate at once (lower is better):
    ``(in_flight + 1 + QUEUE_OFFSET * mean_in_flight) * max(latency, LATENCY_BAND * fastest)
    * gpu slowdown / weight``.

    Finagle's ``(in_flight + 1) * latency`` is the wait at a server that answers one call at a time.
    A GPU replica runs many calls at once (a batch), and its peak-EWMA latency was measured while it
    held its usual number of them; charging a full round trip for each of those made a replica 4x
    slower but empty look cheaper than a healthy one holding its usual 4 calls, and it kept 2-5 % of
    the traffic, enough to put its latency at the fleet's p99 (benchmarks/fleet.py, scenario 2).
    Offsetting the queue by the candidates' usual one keeps the order of ``in_flight`` between equal
    latencies, while a clear latency ratio (about 1.5x and more) outweighs any usual queue. The GPU
    slowdown is ``gpu_cost``'s, taken at ``mean + GPU_EXCESS * max(0, util - mean)`` with unknown
    readings counted as ``GPU_NEUTRAL`` first. An unmeasured replica keeps Finagle's
    probe-then-penalty rule (``peak_ewma_cost``).
    """
    n = len(candidates)
    if n == 0:
        return []
    if n == 1:
        return [least_loaded_cost(candidates[0], now)]
    in_flight_sum = 0
    fastest = math.inf
    utils: list[float] = []
    latencies: list[float] = []
    for c in candidates:
        in_flight_sum += c.in_flight
        latency = c.latency_s(now)
        latencies.append(latency)
        if 0.0 < latency < fastest:
            fastest = latency
        u = c.gpu_util
        utils.append(GPU_NEUTRAL if u is None else min(max(u, 0.0), _UTIL_CAP))
    offset = 1.0 + QUEUE_OFFSET * in_flight_sum / n
    floor = LATENCY_BAND * fastest if fastest < math.inf else 0.0
    mean_util = sum(utils) / n
    out: list[float] = []
    for c, latency, u in zip(candidates, latencies, utils, strict=True):
        pending = c.in_flight
        if latency <= 0.0:
            out.append(0.0 if pending == 0 else NO_DATA_PENALTY + pending)
            continue
        util = mean_util + GPU_EXCESS * (u - mean_util) if u > mean_util else mean_util
        mem = c.gpu_mem_frac
        m = GPU_NEUTRAL if mem is None else min(max(mem, 0.0), _MEM_CAP)
        slowdown = (1.0 + _MEM_WEIGHT * m / (1.0 - m)) / (1.0 - util)
        out.append((pending + offset) * max(latency, floor) * slowdown / c.weight)
    return out
