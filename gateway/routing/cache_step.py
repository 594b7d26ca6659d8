"""The exact-match cache step of the request path, with single-flight coalescing: identical
concurrent misses share one upstream call (DESIGN.md, "One request", step 3).

What must always hold: only successful answers of cacheable methods are stored; compressed
bodies and `Cache-Control: no-cache` bypass the lookup; a hit replays the stored answer with
the replica that first served it and `x-infergate-cache: hit`.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.cache import Entry, PredictionCache, cache_key
from gateway.core.call import Answer, Call, Forwarder
from gateway.core.metrics import Metrics
from gateway.fleet.replicas import ReplicaState
from gateway.routing.dispatch import Dispatcher

CACHEABLE = frozenset({"predict", "classify", "regress", "multi_inference"})


class CacheStep:
    def __init__(self, dispatcher: Dispatcher, caches: Callable[[str], PredictionCache | None],
                 metrics: Metrics) -> None:
        self.dispatcher = dispatcher
        self._caches = caches
        self.metrics = metrics

    def has_cache(self, model: str) -> bool:
        return self._caches(model) is not None

    async def send(self, call: Call, fwd: Forwarder, ranked: list[ReplicaState],
                   version: int | None, arm: str, now: float) -> Answer:
        """Through the model's exact-match cache when it has one, else straight upstream."""
        cache = self._caches(call.model or "")
        if cache is None or version is None or call.method not in CACHEABLE:
            return await self.dispatcher.send(call, fwd, ranked, version, arm, now)
        return await self._cached(cache, call, fwd, ranked, version, arm, now)

    async def _cached(self, cache: PredictionCache, call: Call, fwd: Forwarder,
                      ranked: list[ReplicaState], version: int, arm: str, now: float) -> Answer:
        m = self.metrics.cache
        model = call.model or ""
        send = self.dispatcher.send
        if call.headers.get("content-encoding"):
            m.labels(model, "bypass").inc()  # compressed bodies are not canonicalised
            return await send(call, fwd, ranked, version, arm, now)
        key = cache_key(model, version, call.signature, call.method, call.protocol, call.body)
        if "no-cache" not in call.headers.get("cache-control", ""):
            entry = await cache.lookup(key)
            if entry is not None:
                m.labels(model, "hit").inc()
                return Answer.from_cache(entry.status, entry.body, entry.headers, version, arm)
        else:
            m.labels(model, "bypass").inc()

        async def upstream() -> Answer:
            return await send(call, fwd, ranked, version, arm, now)

        answer, shared = await cache.coalesce(key, upstream)
        m.labels(model, "coalesced" if shared else "miss").inc()
        if not shared and answer.ok(call.protocol):
            if not cache.store(key, Entry(answer.status, answer.body, answer.cache_headers())):
                m.labels(model, "not_stored").inc()
        return answer
