"""The embedding-similarity cache in the request path (opt-in per model, REST predict only).

The configured input tensor of a REST predict body is the vector; a hit is the nearest cached
vector above the cosine threshold (gateway.cache.similarity). A configured fraction of hits is
re-checked against the model in the background: the answers are compared and the measured
false-hit rate tightens the threshold by itself when it passes its target.

One index per (model, version, signature): a hit never crosses versions. gRPC calls are not
decoded (the gateway forwards their bytes untouched) and so bypass this cache.

What must always hold: a similarity hit is an answer the model gave before for an input within
the threshold; verification never delays the client.
"""

from __future__ import annotations

import logging
import random

import orjson

from gateway.cache import Entry, SimilarityIndex, extract_vector
from gateway.config import SimilarityCache as SimilarityConfig
from gateway.core.call import Answer, Call, Forwarder
from gateway.core.errors import GatewayError
from gateway.core.metrics import Metrics
from gateway.core.tasks import spawn
from gateway.fleet.replicas import ReplicaState
from gateway.rollout.compare import compare_predictions
from gateway.routing.cache_step import CacheStep

log = logging.getLogger("infergate.similarity")
MAX_INDEXES_PER_MODEL = 8


class SimilarityCaches:
    def __init__(self, cache_step: CacheStep, metrics: Metrics, rng: random.Random) -> None:
        self.cache_step = cache_step
        self.metrics = metrics
        self.rng = rng
        self.indexes: dict[tuple[str, int, str], SimilarityIndex] = {}

    def _index(self, model: str, version: int, signature: str, cfg: SimilarityConfig,
               dim: int) -> SimilarityIndex | None:
        key = (model, version, signature)
        idx = self.indexes.get(key)
        if idx is None:
            stale = [k for k in self.indexes if k[0] == model and k[1] != version]
            for k in stale:  # a new version is served: the old one's answers go
                del self.indexes[k]
            if sum(1 for k in self.indexes if k[0] == model) >= MAX_INDEXES_PER_MODEL:
                return None
            idx = SimilarityIndex(dim, cfg.threshold, cfg.max_entries,
                                  verify_fraction=cfg.verify_fraction,
                                  target_false_hit_rate=cfg.target_false_hit_rate)
            self.indexes[key] = idx
        return idx if idx.dim == dim else None

    async def handle(self, call: Call, fwd: Forwarder, ranked: list[ReplicaState], version: int,
                     arm: str, now: float, cfg: SimilarityConfig) -> Answer:
        m = self.metrics
        model = call.model or ""
        vec: list[float] | None = None
        if call.protocol == "rest" and call.method == "predict" and not call.headers.get(
                "content-encoding"):
            try:
                vec = extract_vector(orjson.loads(call.body), cfg.input)
            except orjson.JSONDecodeError:
                vec = None
        if not vec:
            m.similarity.labels(model, "bypass").inc()
            return await self.cache_step.send(call, fwd, ranked, version, arm, now)
        idx = self._index(model, version, call.signature, cfg, len(vec))
        if idx is None:
            return await self.cache_step.send(call, fwd, ranked, version, arm, now)
        found = idx.lookup(vec)
        if found is not None and "no-cache" not in call.headers.get("cache-control", ""):
            entry, score = found
            m.similarity.labels(model, "hit").inc()
            answer = Answer.from_cache(entry.status, entry.body, entry.headers, version, arm)
            if idx.should_verify(self.rng):
                spawn(self._verify(call, fwd, ranked, version, idx, entry), "similarity-verify")
            return answer
        m.similarity.labels(model, "miss").inc()
        answer = await self.cache_step.send(call, fwd, ranked, version, arm, now)
        if answer.ok(call.protocol) and answer.cache != "hit":
            idx.add(vec, Entry(answer.status, answer.body, answer.cache_headers()))
        return answer

    async def _verify(self, call: Call, fwd: Forwarder, ranked: list[ReplicaState], version: int,
                      idx: SimilarityIndex, entry: Entry) -> None:
        model = call.model or ""
        try:
            fresh = await self.cache_step.dispatcher.attempt(call, fwd, ranked[0], version, 10.0)
        except GatewayError as exc:
            log.debug("similarity verification call failed: %s", exc)
            return
        if not fresh.ok(call.protocol):
            return
        agreed = compare_predictions(entry.body, fresh.body, call.protocol, method=call.method)
        idx.record_verification(agreed)
        m = self.metrics
        m.similarity_verified.labels(model, "agree" if agreed else "false_hit").inc()
        m.similarity_false_hit_rate.labels(model).set(idx.measured_false_hit_rate)
        m.similarity_threshold.labels(model).set(idx.threshold)

