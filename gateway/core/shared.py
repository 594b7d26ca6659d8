"""State several gateway processes share: each one's latest facts under a topic, leases that
let one process at a time decide, and small documents (the decider's output).

Two stores with one interface:
- `RedisShared`: every gateway (pods, workers) on one Redis;
- `FileShared`: the workers of one `infergate run --workers N` without Redis, through files in
  a folder they share (tmpfs when the machine has /dev/shm): no extra service for one node.

What must always hold: a store never raises into its caller (a failure is logged once per
outage and answered as "unknown": None or False), so losing Redis degrades decisions to
per-process ones, never fails calls; an instance's facts older than `max_age_s` are ignored
(a gateway that died stops counting within that time); a lease is held by at most one instance
and moves when its holder stops renewing it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("infergate.shared")

Doc = dict[str, Any]


def new_instance_id() -> str:
    """A name for this process among its peers: host, pid and a random part (pids repeat
    across pods)."""
    return f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SharedStore(Protocol):
    instance: str

    async def publish(self, topic: str, doc: Doc) -> bool: ...

    async def collect(self, topic: str, max_age_s: float) -> dict[str, Doc] | None: ...

    async def lease(self, name: str, ttl_s: float) -> bool: ...

    async def put(self, key: str, doc: Doc) -> bool: ...

    async def get(self, key: str) -> Doc | None: ...

    async def close(self) -> None: ...


class _Outage:
    """Logs the first failure of an outage and the recovery, not every failed call."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def failed(self, exc: BaseException) -> None:
        if not self.down:
            log.warning("%s unavailable, deciding per process until it is back: %s", self.what,
                        exc)
        self.down = True

    def ok(self) -> None:
        if self.down:
            log.info("%s is back", self.what)
        self.down = False


# Acquire or renew: the key holds the owner; renew only one's own lease.
_LEASE = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class RedisShared:
    def __init__(self, url: str, instance: str | None = None, prefix: str = "infergate:fleet:",
                 timeout_s: float = 0.5) -> None:
        self.instance = instance or new_instance_id()
        self.prefix = prefix
        self._client: aioredis.Redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._outage = _Outage(f"shared state in Redis ({url})")

    async def publish(self, topic: str, doc: Doc) -> bool:
        body = json.dumps({"at": time.time(), "doc": doc}, separators=(",", ":"))
        try:
            await self._client.hset(self.prefix + topic, self.instance, body)
        except (TimeoutError, RedisError, OSError) as exc:
            self._outage.failed(exc)
            return False
        self._outage.ok()
        return True

    async def collect(self, topic: str, max_age_s: float) -> dict[str, Doc] | None:
        try:
            raw = await self._client.hgetall(self.prefix + topic)
        except (TimeoutError, RedisError, OSError) as exc:
            self._outage.failed(exc)
            return None
        self._outage.ok()
        out: dict[str, Doc] = {}
        stale: list[Any] = []
        low = time.time() - max_age_s
        for k, v in raw.items():
            try:
                entry = json.loads(v)
                at, doc = float(entry["at"]), entry["doc"]
            except (ValueError, KeyError, TypeError):
                stale.append(k)
                continue
            if at < low:
                stale.append(k)
            elif isinstance(doc, dict):
                out[k.decode() if isinstance(k, bytes) else str(k)] = doc
        if stale:  # instances gone for good: forget them (any peer may do it)
            try:
                await self._client.hdel(self.prefix + topic, *stale)
            except (TimeoutError, RedisError, OSError):
                pass
        return out

    async def lease(self, name: str, ttl_s: float) -> bool:
        try:
            got = await self._client.eval(_LEASE, 1, self.prefix + "lease:" + name,
                                          self.instance, str(int(ttl_s * 1000)))
        except (TimeoutError, RedisError, OSError) as exc:
            self._outage.failed(exc)
            return False
        self._outage.ok()
        return bool(got)

    async def put(self, key: str, doc: Doc) -> bool:
        try:
            await self._client.set(self.prefix + key, json.dumps(doc, separators=(",", ":")))
        except (TimeoutError, RedisError, OSError) as exc:
            self._outage.failed(exc)
            return False
        return True

    async def get(self, key: str) -> Doc | None:
        try:
            raw = await self._client.get(self.prefix + key)
        except (TimeoutError, RedisError, OSError) as exc:
            self._outage.failed(exc)
            return None
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    async def close(self) -> None:
        await self._client.aclose()


def shared_folder() -> Path:
    """A fresh folder for the workers of one `--workers N` run (tmpfs where there is one)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="infergate-workers-", dir=base))


class FileShared:
    """The same interface over files in one folder; for processes on one machine."""

    def __init__(self, folder: str | Path, instance: str | None = None) -> None:
        self.instance = instance or new_instance_id()
        self.folder = Path(folder)

    @staticmethod
    def _write(path: Path, doc: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)

    @staticmethod
    def _read(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    async def publish(self, topic: str, doc: Doc) -> bool:
        path = self.folder / f"{topic}@{self.instance}.json"
        try:
            await asyncio.to_thread(self._write, path, {"at": time.time(), "doc": doc})
        except OSError as exc:
            log.warning("cannot publish %s to %s: %s", topic, self.folder, exc)
            return False
        return True

    def _collect(self, topic: str, max_age_s: float) -> dict[str, Doc]:
        out: dict[str, Doc] = {}
        low = time.time() - max_age_s
        for path in self.folder.glob(f"{topic}@*.json"):
            entry = self._read(path)
            if not isinstance(entry, dict) or float(entry.get("at", 0)) < low:
                continue
            doc = entry.get("doc")
            if isinstance(doc, dict):
                out[path.stem.split("@", 1)[1]] = doc
        return out

    async def collect(self, topic: str, max_age_s: float) -> dict[str, Doc] | None:
        try:
            return await asyncio.to_thread(self._collect, topic, max_age_s)
        except OSError:
            return None

    def _lease(self, name: str, ttl_s: float) -> bool:
        lock = self.folder / f"lease-{name}.lock"
        state = self.folder / f"lease-{name}.json"
        with open(lock, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                cur = self._read(state)
                now = time.time()
                if (isinstance(cur, dict) and cur.get("owner") != self.instance
                        and float(cur.get("until", 0)) > now):
                    return False
                self._write(state, {"owner": self.instance, "until": now + ttl_s})
                return True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    async def lease(self, name: str, ttl_s: float) -> bool:
        try:
            return await asyncio.to_thread(self._lease, name, ttl_s)
        except OSError:
            return False

    async def put(self, key: str, doc: Doc) -> bool:
        try:
            await asyncio.to_thread(self._write, self.folder / f"doc-{key}.json", doc)
        except OSError:
            return False
        return True

    async def get(self, key: str) -> Doc | None:
        doc = await asyncio.to_thread(self._read, self.folder / f"doc-{key}.json")
        return doc if isinstance(doc, dict) else None

    async def close(self) -> None:
        return None


def make_shared(store: str, folder: str | None) -> SharedStore | None:
    """Redis when the cache store is a redis:// URL; the workers' folder when one is given
    (`--workers N` without Redis); else nothing to share (one process decides alone)."""
    if store.startswith(("redis://", "rediss://")):
        return RedisShared(store)
    if folder:
        return FileShared(folder)
    return None
