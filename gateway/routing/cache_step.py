"""The exact-match cache step of the request path, with single-flight coalescing: identical
concurrent misses share one upstream call (DESIGN.md, "One request", step 3).

What must always hold: only successful answers of cacheable methods are stored; compressed
bodies and `Cache-Control: no-cache` bypass the lookup; a hit replays the stored answer with
the replica that first served it and `x-infergate-cache: hit`. With `stale_if_error_s`, each
stored answer is also kept (in memory, by request whatever the version) for its TTL plus that
long, and only ever served when no tier could answer (`x-infergate-tier: stale`).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.cache import Entry, MemoryLRU, PredictionCache, cache_key
from gateway.config import ExactCache
from gateway.core.call import Answer, Call, Forwarder
from gateway.core.metrics import Metrics
from gateway.fleet.replicas import ReplicaState
from gateway.routing.dispatch import Dispatcher

CACHEABLE = frozenset({"predict", "classify", "regress", "multi_inference"})


class CacheStep:
    def __init__(self, dispatcher: Dispatcher, caches: Callable[[str], PredictionCache | None],
                 metrics: Metrics, exact: Callable[[str], ExactCache | None]) -> None:
        self.dispatcher = dispatcher
        self._caches = caches
        self.metrics = metrics
        self._exact = exact  # a model's exact-cache settings in the config in force
        self._stale: dict[str, tuple[tuple[float, int], MemoryLRU]] = {}

    def _stale_copies(self, model: str) -> MemoryLRU | None:
        e = self._exact(model)
        if e is None or e.stale_if_error_s <= 0:
            return None
        spec = (e.ttl_s + e.stale_if_error_s, e.max_bytes)
        held = self._stale.get(model)
        if held is None or held[0] != spec:
            held = self._stale[model] = (spec, MemoryLRU(e.max_bytes, spec[0],
                                                         max_entry_bytes=e.max_entry_bytes))
        return held[1]

    @staticmethod
    def _stale_key(call: Call) -> bytes:
        return cache_key(call.model or "", 0, call.signature, call.method, call.protocol, call.body)

    def stale(self, call: Call) -> Answer | None:
        """The last good answer to this request within its TTL + stale_if_error_s, if any."""
        copies = self._stale_copies(call.model or "")
        if copies is None or call.method not in CACHEABLE:
            return None
        entry = copies.get(self._stale_key(call))
        if entry is None:
            return None
        answer = Answer.from_cache(entry.status, entry.body, entry.headers, 0, "stale")
        version = dict(entry.headers).get("x-infergate-version")
        answer.version = int(version) if version and version.isdigit() else None
        answer.headers = [(k, v) for k, v in answer.headers if k != "x-infergate-version"]
        answer.tier = "stale"
        return answer

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
            entry = Entry(answer.status, answer.body, answer.cache_headers())
            if not cache.store(key, entry):
                m.labels(model, "not_stored").inc()
            copies = self._stale_copies(model)
            if copies is not None:
                copies.put(self._stale_key(call), Entry(
                    entry.status, entry.body,
                    entry.headers + (("x-infergate-version", str(version)),)))
        return answer
