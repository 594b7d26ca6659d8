"""`Runtime`: everything one config builds for the request path, swapped whole on reload.

It holds the config itself, the replica set and the compiled model routers. A reload builds a new
Runtime next to the old one and swaps the reference; calls in flight finish on the Runtime they
started with (DESIGN.md, principle 4).

What must always hold: a Runtime is immutable once built, except the replica facts (written by
health checks and completion hooks) and the routers of models discovered on first use, which are
compiled lazily and kept only for models a replica serves (so hostile names leave nothing).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import GatewayConfig, Hedge
from gateway.fleet.replicas import ReplicaSet
from gateway.routing.router import ModelRouter, default_router

# A model's rollout overrides: (split weights by arm or None, label -> version moves).
Overrides = Callable[[str], tuple[dict[str, float] | None, dict[str, int]]]


class Runtime:
    def __init__(self, cfg: GatewayConfig, previous: Runtime | None = None,
                 overrides: Overrides | None = None) -> None:
        self.cfg = cfg
        self.overrides = overrides
        self.replicas: ReplicaSet = ReplicaSet(cfg.replicas, cfg.health.metrics_stale_s,
                                               previous.replicas if previous else None)
        self.routers: dict[str, ModelRouter] = {name: self.build_router(name) for name in cfg.models}
        self.admission_limit = (cfg.limits.max_in_flight_per_replica * max(1, len(cfg.replicas))
                                + cfg.limits.max_queue)

    def build_router(self, name: str) -> ModelRouter:
        """Compile a configured model's router, with any rollout weights and label moves."""
        weights, labels = self.overrides(name) if self.overrides else (None, {})
        return ModelRouter(name, self.cfg.models[name], self.cfg.default_balance, weights, labels)

    def rebuild_routers(self) -> None:
        self.routers = {n: self.build_router(n) for n in self.cfg.models}

    def router(self, model: str) -> ModelRouter:
        r = self.routers.get(model)
        if r is None:
            r = default_router(model, self.cfg.default_balance)
            if self.replicas.knows(model):  # keep only routers of models a replica serves
                self.routers[model] = r
        return r

    def hedge_for(self, model: str | None) -> Hedge | None:
        m = self.cfg.models.get(model) if model else None
        return m.hedge if m else None

    def timeout_for(self, model: str | None) -> float:
        m = self.cfg.models.get(model) if model else None
        return m.timeout_s if m else 30.0
