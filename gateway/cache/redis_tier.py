"""Shared exact-match tier in Redis, built so that Redis can never fail or stall a request.

- Reads (`get`) run under a short deadline (50 ms by default) and at most `max_in_flight_gets` at a
  time; past either limit the read is a miss.
- Writes (`set`) never wait: they enter a bounded queue (by count and bytes) that one background
  writer drains in pipelined batches. A full queue drops the write and counts it.
- Errors (refused, reset, timeout, protocol) feed a `CircuitBreaker`: after a few in a row the
  tier is skipped entirely for a backoff period, then one call probes Redis again; a Redis that
  comes back is used again by itself. While the circuit is open the gateway runs memory-only.
- redis-py's own retries are turned off (its default retries with backoff would outlast our
  deadlines); the breaker is the retry policy.

Values use the binary format of `gateway.cache.entry` (no pickle). A value that does not decode
is a miss, counted as `malformed`. Keys are `key_prefix + key.hex()`.

What must always hold: no method raises because of Redis (only `ValueError` at construction for a
malformed URL); `get` returns within about `get_timeout_s`; memory held by pending writes stays
under `max_pending_bytes`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.cache.circuit import CircuitBreaker, CircuitState
from gateway.cache.entry import Entry, MalformedEntry, decode_entry, encode_entry

log = logging.getLogger(__name__)

# What a failed Redis call can raise: redis-py's own errors, socket errors it lets through, and
# the builtin TimeoutError from our asyncio.timeout deadline.
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


class Spawn(Protocol):
    """Starts a named background task and keeps a reference to it (gateway.core.tasks.spawn)."""

    def __call__(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]: ...


@dataclass(slots=True)
class RedisStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    malformed: int = 0
    skipped_open: int = 0  # reads skipped because the circuit was open
    skipped_busy: int = 0  # reads skipped because max_in_flight_gets were already out
    sets: int = 0
    set_errors: int = 0  # writes lost to a failed batch
    set_dropped: int = 0  # writes refused: queue full, circuit open, or unencodable


def _redact(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


def validate_redis_url(url: str) -> None:
    """Raise ValueError, naming the problem, unless `url` is a usable redis://, rediss:// or unix:// URL."""
    shown = _redact(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- urllib checks the port only when it is read
    except ValueError as exc:
        raise ValueError(f"cache store {shown!r} is not a valid Redis URL: {exc}") from exc
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"cache store {shown!r}: expected 'memory' or a URL starting with redis://, rediss:// or unix://"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"cache store {shown!r}: a unix:// URL needs a socket path")
        return
    if not parts.hostname:
        raise ValueError(f"cache store {shown!r}: the URL names no host")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"cache store {shown!r}: the database (URL path) must be a number, got {db!r}")


class RedisTier:
    """The Redis tier. `spawn` starts the background writer (only when a first write arrives)."""

    def __init__(
        self,
        url: str,
        ttl_s: float,
        key_prefix: str = "infergate:cache:",
        *,
        spawn: Spawn,
        get_timeout_s: float = 0.05,
        set_timeout_s: float = 0.25,
        failures_to_open: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_in_flight_gets: int = 64,
        max_pending_sets: int = 4096,
        max_pending_bytes: int = 64 << 20,
        set_batch: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        validate_redis_url(url)
        if ttl_s <= 0:
            raise ValueError(f"RedisTier: ttl_s must be > 0, got {ttl_s}")
        if get_timeout_s <= 0 or set_timeout_s <= 0:
            raise ValueError("RedisTier: timeouts must be > 0")
        self.url = _redact(url)
        self.ttl_s = ttl_s
        self._prefix = key_prefix.encode("utf-8")
        self._spawn = spawn
        self._get_timeout = get_timeout_s
        self._set_timeout = set_timeout_s
        self._max_in_flight = max_in_flight_gets
        self._max_pending = max_pending_sets
        self._max_pending_bytes = max_pending_bytes
        self._set_batch = set_batch
        self.circuit = CircuitBreaker(
            clock, failures_to_open=failures_to_open, backoff_s=backoff_s, max_backoff_s=max_backoff_s
        )
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=max(get_timeout_s, set_timeout_s),
            socket_timeout=max(get_timeout_s, set_timeout_s),
            # Reads are capped by max_in_flight_gets and the writer holds one connection, so the
            # pool never needs more; the cap keeps a burst from opening thousands of sockets.
            max_connections=max_in_flight_gets + 2,
        )
        self._in_flight = 0
        self._pending: deque[tuple[bytes, Entry, float]] = deque()
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = RedisStats()

    @property
    def circuit_state(self) -> CircuitState:
        return self.circuit.state

    @property
    def pending_sets(self) -> int:
        return len(self._pending)

    def _redis_key(self, key: bytes) -> bytes:
        return self._prefix + key.hex().encode("ascii")

    async def get(self, key: bytes) -> tuple[Entry, float] | None:
        """(entry, seconds it has left in Redis), or None on a miss, a skip or any failure."""
        if self._closed:
            return None
        if self._in_flight >= self._max_in_flight:
            self.stats.skipped_busy += 1
            return None
        if not self.circuit.allow():
            self.stats.skipped_open += 1
            return None
        rkey = self._redis_key(key)
        self._in_flight += 1
        try:
            async with asyncio.timeout(self._get_timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.get(rkey)
                    pipe.pttl(rkey)
                    value, pttl_ms = await pipe.execute()
        except _REDIS_FAILURES as exc:
            self._record_failure(exc)
            return None
        except asyncio.CancelledError:
            self.circuit.release_probe()  # our caller went away; says nothing about Redis
            raise
        finally:
            self._in_flight -= 1
        self._record_success()
        return self._decode_hit(value, pttl_ms)

    def _decode_hit(self, value: object, pttl_ms: object) -> tuple[Entry, float] | None:
        if not isinstance(value, bytes) or not isinstance(pttl_ms, int) or pttl_ms == -2:
            self.stats.misses += 1  # absent, or expired between the two commands
            return None
        try:
            entry = decode_entry(value)
        except MalformedEntry as exc:
            self.stats.malformed += 1
            self.stats.misses += 1
            log.debug("ignoring malformed cache value: %s", exc)
            return None
        self.stats.hits += 1
        remaining = pttl_ms / 1000.0 if pttl_ms > 0 else self.ttl_s  # -1: no expiry set by someone
        return entry, remaining

    def set(self, key: bytes, entry: Entry, ttl_s: float | None = None) -> bool:
        """Queue a write and return at once. False when the write was dropped instead."""
        if self._closed or self.circuit.state is CircuitState.OPEN:
            self.stats.set_dropped += 1
            return False
        size = entry.size_bytes()
        if len(self._pending) >= self._max_pending or self._pending_bytes + size > self._max_pending_bytes:
            self.stats.set_dropped += 1
            return False
        self._pending.append((key, entry, self.ttl_s if ttl_s is None else ttl_s))
        self._pending_bytes += size
        self._wakeup.set()
        if self._writer is None or self._writer.done():
            self._writer = self._spawn(self._write_loop(), "cache-redis-writer")
        return True

    async def _write_loop(self) -> None:
        while not self._closed:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[tuple[bytes, bytes, int]] = []
            while self._pending and len(batch) < self._set_batch:
                key, entry, ttl = self._pending.popleft()
                self._pending_bytes -= entry.size_bytes()
                try:
                    value = encode_entry(entry)
                except ValueError as exc:
                    self.stats.set_dropped += 1
                    log.debug("cache entry not storable in Redis: %s", exc)
                    continue
                batch.append((self._redis_key(key), value, max(1, int(ttl * 1000))))
            if batch:
                await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[bytes, bytes, int]]) -> None:
        if not self.circuit.allow():
            self.stats.set_dropped += len(batch)
            return
        try:
            async with asyncio.timeout(self._set_timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    for rkey, value, px in batch:
                        pipe.set(rkey, value, px=px)
                    await pipe.execute()
        except _REDIS_FAILURES as exc:
            self.stats.set_errors += len(batch)
            self._record_failure(exc)
            return
        except asyncio.CancelledError:
            self.circuit.release_probe()
            raise
        self.stats.sets += len(batch)
        self._record_success()

    def _record_failure(self, exc: BaseException) -> None:
        self.stats.errors += 1
        opened_before = self.circuit.opened_total
        self.circuit.record_failure()
        if self.circuit.opened_total != opened_before:
            log.warning(
                "redis cache %s unusable (%s: %s); memory only until the next probe",
                self.url,
                type(exc).__name__,
                exc,
            )

    def _record_success(self) -> None:
        if self.circuit.state is not CircuitState.CLOSED:
            log.info("redis cache %s reachable again", self.url)
        self.circuit.record_success()

    async def aclose(self) -> None:
        """Stop the writer (pending writes are dropped) and close the connections."""
        self._closed = True
        self._wakeup.set()
        dropped = len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self.stats.set_dropped += dropped
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.wait([self._writer])
        await self._client.aclose()
