"""Replica membership, health and load: the state every routing decision reads.

Writers (DESIGN.md, principle 3): the health checker (model status, liveness, scraped metrics)
and the request path's completion hook (in-flight count, latency, outcome). Policies only read.

What must always hold:
- `ReplicaSet.available(model, version)` lists only replicas that are healthy, not ejected and
  report that version AVAILABLE; it is rebuilt whenever a writer changes any of those facts, so
  the request path does a dict lookup, never a scan.
- A replica that has never answered a probe is not routable.
- Across a reload, a replica keeps its observed state when its addresses stay the same, even
  under a new name.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.config import Replica as ReplicaConfig
from policies.load import PeakEwma

AVAILABLE = "AVAILABLE"


@dataclass(slots=True)
class GpuReading:
    util: float | None = None  # 0..1
    mem_frac: float | None = None  # 0..1
    cpu_util: float | None = None  # 0..1
    at: float = 0.0  # monotonic time of the scrape
    ok: bool = False  # the last scrape parsed


@dataclass(eq=False, slots=True)
class ReplicaState:
    """One replica as the gateway sees it. Implements policies.base.ReplicaView."""

    cfg: ReplicaConfig
    stale_after_s: float = 10.0
    healthy: bool = False
    ever_up: bool = False  # has passed a probe at least once
    successes: int = 0  # consecutive probe successes (rise)
    failures: int = 0  # consecutive probe failures (fall)
    in_flight: int = 0
    ewma: PeakEwma = field(default_factory=PeakEwma)
    versions: dict[str, dict[int, str]] = field(default_factory=dict)  # model -> version -> state
    gpu: GpuReading = field(default_factory=GpuReading)
    consecutive_errors: int = 0
    ejected_until: float = 0.0
    ejections: int = 0
    requests: int = 0
    errors: int = 0
    draining: bool = False

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def pool(self) -> str:
        return self.cfg.pool

    @property
    def weight(self) -> float:
        return self.cfg.weight

    def latency_s(self, now: float) -> float:
        return self.ewma.value(now)

    def load_fresh(self) -> bool:
        """The last scrape parsed and is not older than the staleness limit."""
        return self.gpu.ok and time.monotonic() - self.gpu.at <= self.stale_after_s

    @property
    def gpu_util(self) -> float | None:
        return self.gpu.util if self.load_fresh() else None

    @property
    def gpu_mem_frac(self) -> float | None:
        return self.gpu.mem_frac if self.load_fresh() else None

    @property
    def cpu_util(self) -> float | None:
        return self.gpu.cpu_util if self.load_fresh() else None

    def routable(self, now: float) -> bool:
        return self.healthy and not self.draining and now >= self.ejected_until


class ReplicaSet:
    """All configured replicas plus the (model, version) -> routable replicas index."""

    def __init__(self, configs: Iterable[ReplicaConfig], stale_after_s: float = 10.0,
                 previous: ReplicaSet | None = None) -> None:
        # A replica is where it answers: its observed health and load carry over a reload that
        # keeps its addresses, under the same name or a new one (a rename must not leave a
        # serving fleet unroutable until the next probe). Same name and addresses match first;
        # then same addresses; each old state is taken at most once.
        configs = list(configs)
        unclaimed = list(previous.all) if previous else []
        states: list[ReplicaState | None] = [None] * len(configs)
        for by_address_only in (False, True):
            for i, cfg in enumerate(configs):
                if states[i] is not None:
                    continue
                for prev in unclaimed:
                    if ((prev.cfg.rest, prev.cfg.grpc) == (cfg.rest, cfg.grpc)
                            and (by_address_only or prev.name == cfg.name)):
                        unclaimed.remove(prev)
                        prev.cfg = cfg  # keep observed health and load across a reload
                        prev.stale_after_s = stale_after_s
                        states[i] = prev
                        break
        self.all: list[ReplicaState] = [
            st if st is not None else ReplicaState(cfg, stale_after_s)
            for st, cfg in zip(states, configs, strict=True)]
        self.by_name = {r.name: r for r in self.all}
        self._index: dict[tuple[str, int], list[ReplicaState]] = {}
        self._latest: dict[str, int] = {}
        self._known: dict[str, set[int]] = {}
        self.rebuild()

    def rebuild(self, now: float | None = None) -> None:
        """Recompute the routing index from the replicas' current facts."""
        now = time.monotonic() if now is None else now
        index: dict[tuple[str, int], list[ReplicaState]] = {}
        latest: dict[str, int] = {}
        known: dict[str, set[int]] = {}
        for r in self.all:
            for model, versions in r.versions.items():
                known.setdefault(model, set()).update(versions)
                if not r.routable(now):
                    continue
                for v, state in versions.items():
                    if state == AVAILABLE:
                        index.setdefault((model, v), []).append(r)
                        if v > latest.get(model, -1):
                            latest[model] = v
        self._index, self._latest, self._known = index, latest, known

    def available(self, model: str, version: int) -> list[ReplicaState]:
        return self._index.get((model, version), [])

    def latest(self, model: str) -> int | None:
        """Newest version AVAILABLE on a routable replica of the fleet."""
        return self._latest.get(model)

    def knows(self, model: str) -> bool:
        return model in self._known

    def versions_seen(self, model: str) -> set[int]:
        return self._known.get(model, set())

    def with_model(self, model: str, now: float) -> list[ReplicaState]:
        """Routable replicas that report any version of `model` AVAILABLE."""
        return [r for r in self.all if r.routable(now)
                and any(s == AVAILABLE for s in r.versions.get(model, {}).values())]

    def routable(self, now: float) -> list[ReplicaState]:
        return [r for r in self.all if r.routable(now)]

    def models(self) -> set[str]:
        return set(self._known)
