"""One exact-match `PredictionCache` per model whose config has `cache.exact`.

What must always hold: a reload that keeps a model's cache parameters keeps its cache (a reload
does not empty it); a cache whose parameters change or whose model is gone is closed.
"""

from __future__ import annotations

from gateway.cache import PredictionCache
from gateway.config import GatewayConfig
from gateway.core.tasks import spawn


class ModelCaches:
    def __init__(self) -> None:
        self.by_model: dict[str, PredictionCache] = {}
        self._specs: dict[str, tuple[object, ...]] = {}

    def get(self, model: str) -> PredictionCache | None:
        return self.by_model.get(model)

    def items(self) -> list[tuple[str, PredictionCache]]:
        return list(self.by_model.items())

    def sync(self, cfg: GatewayConfig) -> None:
        caches: dict[str, PredictionCache] = {}
        specs: dict[str, tuple[object, ...]] = {}
        for name, m in cfg.models.items():
            if m.cache is None or m.cache.exact is None:
                continue
            e = m.cache.exact
            spec = (cfg.cache.store, e.ttl_s, e.max_bytes, e.max_entry_bytes)
            old = self.by_model.get(name)
            if old is not None and self._specs.get(name) == spec:
                caches[name] = old
            else:
                caches[name] = PredictionCache(
                    cfg.cache.store, ttl_s=e.ttl_s, max_bytes=e.max_bytes,
                    max_entry_bytes=e.max_entry_bytes, spawn=spawn,
                    key_prefix=f"infergate:cache:{name}:")
            specs[name] = spec
        retired = [c for n, c in self.by_model.items() if caches.get(n) is not c]
        self.by_model, self._specs = caches, specs
        for c in retired:
            spawn(c.aclose(), "cache-close")

    async def close(self) -> None:
        for c in self.by_model.values():
            await c.aclose()
