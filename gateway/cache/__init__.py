"""Prediction caching for the gateway: exact-match keys, a memory tier, a Redis tier,
single-flight coalescing of identical calls, and an opt-in similarity index.

The pipeline needs only: `cache_key(...)` to name a call, `PredictionCache` to look up, coalesce
and store, and `Entry` for what is replayed. Importing this package never imports numpy (the
similarity index loads it when one is built) and never touches the network.
"""

from gateway.cache.circuit import CircuitBreaker, CircuitState
from gateway.cache.coalesce import Coalescer
from gateway.cache.entry import Entry, MalformedEntry, decode_entry, encode_entry
from gateway.cache.keys import cache_key
from gateway.cache.memory import MemoryLRU
from gateway.cache.redis_tier import RedisTier, Spawn, validate_redis_url
from gateway.cache.similarity import SimilarityIndex, extract_vector
from gateway.cache.tiered import PredictionCache

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "Coalescer",
    "Entry",
    "MalformedEntry",
    "MemoryLRU",
    "PredictionCache",
    "RedisTier",
    "SimilarityIndex",
    "Spawn",
    "cache_key",
    "decode_entry",
    "encode_entry",
    "extract_vector",
    "validate_redis_url",
]
