"""A discrete-event simulation of the fleet benchmark's replicas behind one balancer policy
(`python -m benchmarks.fleet_sim`): the same scenario models (`benchmarks.fleet_scenarios`), the
same 1,200 calls/s of Poisson arrivals, a GPU scrape every 2 s, but no processes, no sockets and
no noise beyond what is asked for, so small differences between policies are real ones. This is
how the `least_loaded` changes were chosen before they were measured (docs/benchmarks.md).

The gateway's side is modelled as the completion hook keeps it: in-flight counts, a peak EWMA
fed with each round trip (plus a fixed 0.3 ms for the hop and, with --jitter-ms, an exponential
extra delay of that mean), and GPU utilisation read at each scrape.

What must always hold: a run is a pure function of (policy, scenario, seed, jitter): seeded rng,
simulated clock.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections import deque
from dataclasses import dataclass, field

import policies  # noqa: F401  (registers every balancer)
from benchmarks.fleet_scenarios import SCENARIO_KEYS, BusyMeter, build
from policies.base import PickContext
from policies.load import PeakEwma
from policies.registry import make_balancer

HOP_S = 0.0003
SCRAPE_S = 2.0


@dataclass(eq=False)
class SimReplica:
    """A ReplicaView whose load the simulation drives."""

    name: str
    weight: float = 1.0
    pool: str = "default"
    in_flight: int = 0
    gpu_util: float | None = None
    gpu_mem_frac: float | None = None
    ewma: PeakEwma = field(default_factory=PeakEwma)

    def latency_s(self, now: float) -> float:
        return self.ewma.value(now)


def simulate(policy: str, key: str, seed: int, rate: float = 1200.0, duration_s: float = 20.0,
             jitter_s: float = 0.0, replicas: int = 4) -> tuple[list[float], list[int]]:
    """Round trips (seconds, sorted) and calls per replica for one simulated run."""
    sc = build(key, duration_s)
    rng = random.Random(seed)
    balancer = make_balancer(policy)
    views = [SimReplica(f"r{i}") for i in range(replicas)]
    executing = [0] * replicas
    queues: list[deque[float]] = [deque() for _ in range(replicas)]
    meters = [BusyMeter() for _ in range(replicas)]
    events: list[tuple[float, int, str, int, float]] = []  # (time, seq, kind, replica, sent)
    seq = 0
    t = rng.expovariate(rate)
    while t < duration_s:
        events.append((t, seq, "call", -1, 0.0))
        seq += 1
        t += rng.expovariate(rate)
    events += [(k * SCRAPE_S + 0.37, seq + k, "scrape", -1, 0.0)
               for k in range(int(duration_s / SCRAPE_S) + 1)]
    seq += len(events)
    heapq.heapify(events)
    rtts: list[float] = []
    counts = [0] * replicas

    def start(i: int, now: float) -> None:
        nonlocal seq
        while queues[i] and executing[i] < sc.slots:
            sent = queues[i].popleft()
            end = sc.finish_s(i, now, sc.service_s(i, now, executing[i] + 1))
            executing[i] += 1
            heapq.heappush(events, (end, seq, "done", i, sent))
            seq += 1
        meters[i].set(now, min(executing[i], sc.slots) / sc.slots)

    while events:
        now, _, kind, i, sent = heapq.heappop(events)
        if kind == "call":
            chosen = balancer.rank(views, PickContext(rng=rng, now=now))[0]
            i = views.index(chosen)  # type: ignore[arg-type]
            views[i].in_flight += 1
            counts[i] += 1
            queues[i].append(now)
            start(i, now)
        elif kind == "done":
            executing[i] -= 1
            rtt = now - sent + HOP_S + (rng.expovariate(1.0 / jitter_s) if jitter_s else 0.0)
            views[i].in_flight -= 1
            views[i].ewma.observe(rtt, now)
            rtts.append(rtt)
            start(i, now)
        else:
            for v, m in zip(views, meters, strict=True):
                v.gpu_util = m.read(now)
    rtts.sort()
    return rtts, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet_sim")
    p.add_argument("--policies", default="least_request,least_loaded")
    p.add_argument("--scenarios", default=",".join(SCENARIO_KEYS))
    p.add_argument("--jitter-ms", type=float, default=1.0, help="mean extra delay per round trip")
    p.add_argument("--seeds", default="1,2,3")
    args = p.parse_args(argv)
    print("| scenario | policy | p50 ms | p99 ms (per seed) | p99.9 ms (per seed) | r0 share |")
    print("|---|---|---:|---|---|---:|")
    for key in args.scenarios.split(","):
        for policy in args.policies.split(","):
            runs = [simulate(policy, key, int(s), jitter_s=args.jitter_ms / 1000.0)
                    for s in args.seeds.split(",")]
            p50 = runs[0][0][len(runs[0][0]) // 2] * 1000
            p99 = ", ".join(f"{r[int(0.99 * len(r))] * 1000:.1f}" for r, _ in runs)
            p999 = ", ".join(f"{r[int(0.999 * len(r))] * 1000:.1f}" for r, _ in runs)
            share = sum(c[0] for _, c in runs) / sum(sum(c) for _, c in runs)
            print(f"| {key} | {policy} | {p50:.1f} | {p99} | {p999} | {100 * share:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
