"""Where rollout state outlives a gateway process: a JSON file, or Redis shared by gateways.

A store keeps, per model, the `RolloutController.state_dict()` of its rollout (state, step,
wall-clock step start, reason, rev). A restarted gateway, or a second gateway on the same Redis,
loads it and continues at the same step.

What must always hold:
- a store never raises into its caller: failures are logged and reported as "nothing stored"
  (load) or "not saved" (save), because rollout persistence must never break traffic;
- nothing here blocks the event loop: file I/O runs in a worker thread, Redis calls are async
  with short timeouts;
- a file is replaced atomically (write a temporary file in the same folder, fsync, os.replace),
  so a crash leaves the old or the new state, never half of one;
- Redis never goes backwards: a save whose rev is older than the stored one for the same
  rollout identity is refused by a compare-and-set script.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("infergate.rollout")


class RolloutStore(Protocol):
    async def load(self, model: str) -> dict[str, Any] | None: ...

    async def save(self, model: str, state: dict[str, Any]) -> bool: ...

    async def close(self) -> None: ...


class FileRolloutStore:
    """All models' rollout states in one JSON file: {"rollouts": {model: state}}.

    Other top-level keys of the file are kept. Meant for one gateway; gateways that share state
    use Redis (two writers of one file may lose each other's last write).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()

    def read_all(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("rollout state file %s unreadable: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def load_sync(self, model: str) -> dict[str, Any] | None:
        rollouts = self.read_all().get("rollouts")
        state = rollouts.get(model) if isinstance(rollouts, dict) else None
        return state if isinstance(state, dict) else None

    def save_sync(self, model: str, state: dict[str, Any]) -> bool:
        data = self.read_all()
        rollouts = data.get("rollouts")
        if not isinstance(rollouts, dict):
            rollouts = data["rollouts"] = {}
        rollouts[model] = state
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("cannot save rollout state of %s to %s: %s", model, self.path, exc)
            return False
        return True

    async def load(self, model: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.load_sync, model)

    async def save(self, model: str, state: dict[str, Any]) -> bool:
        async with self._lock:  # read-modify-write of one file: one at a time in this process
            return await asyncio.to_thread(self.save_sync, model, state)

    async def close(self) -> None:
        return None


# Refuse to overwrite a newer rev of the same rollout identity (two gateways racing).
_CAS = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, d = pcall(cjson.decode, cur)
  if ok and type(d) == 'table' and d['identity'] == ARGV[2]
     and tonumber(d['rev']) and tonumber(d['rev']) > tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class RedisRolloutStore:
    """Rollout states in Redis under `{prefix}{model}` as JSON, shared by every gateway."""

    def __init__(self, url: str, prefix: str = "infergate:rollout:", timeout_s: float = 0.5) -> None:
        self.url = url
        self.prefix = prefix
        self._client: aioredis.Redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    async def load(self, model: str) -> dict[str, Any] | None:
        try:
            raw = await self._client.get(self.prefix + model)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("cannot load rollout state of %s from %s: %s", model, self.url, exc)
            return None
        if raw is None:
            return None
        try:
            state = json.loads(raw)
        except ValueError as exc:
            log.warning("rollout state of %s in %s is not JSON: %s", model, self.url, exc)
            return None
        return state if isinstance(state, dict) else None

    async def save(self, model: str, state: dict[str, Any]) -> bool:
        try:
            done = await self._client.eval(
                _CAS, 1, self.prefix + model, json.dumps(state, sort_keys=True),
                str(state.get("identity", "")), str(int(state.get("rev", 0))))
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("cannot save rollout state of %s to %s: %s", model, self.url, exc)
            return False
        return bool(done)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError) as exc:
            log.debug("closing rollout store %s: %s", self.url, exc)


def make_store(cache_store: str, state_file: str | None) -> RolloutStore | None:
    """The store a config asks for: Redis when the cache store is a redis:// URL, else the
    state file when one is set, else none (state lives and dies with the process)."""
    if cache_store.startswith(("redis://", "rediss://")):
        return RedisRolloutStore(cache_store)
    if state_file:
        return FileRolloutStore(state_file)
    return None
