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
- neither store goes backwards, and of two writers that moved the same rollout from the same
  rev only the first wins: a save is refused (False) when the stored state of the same rollout
  identity has a higher rev, or the same rev with other content (compare-and-set: a Lua script
  in Redis, an flock'ed read-compare-write for the file). Saving the stored state again is a
  success. The loser reloads and adopts the winner's state.
"""

from __future__ import annotations

import asyncio
import fcntl
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

    Other top-level keys of the file are kept. Processes on one machine may share the file
    (the workers of `--workers N`): each save holds an flock on the file's folder and compares
    revs before writing. Gateways on several machines share Redis.
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The lock is on the folder: the file itself is replaced by every save, and a lock
            # file beside it would be one more file in the user's folder.
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
                return self._save_locked(model, state)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot save rollout state of %s to %s: %s", model, self.path, exc)
            return False

    def _save_locked(self, model: str, state: dict[str, Any]) -> bool:
        data = self.read_all()
        rollouts = data.get("rollouts")
        if not isinstance(rollouts, dict):
            rollouts = data["rollouts"] = {}
        if superseded(rollouts.get(model), state):
            return False
        rollouts[model] = state
        try:
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


def superseded(cur: Any, new: dict[str, Any]) -> bool:
    """Whether storing `new` over `cur` would lose a newer state, or another writer's move
    from the same rev, of the same rollout (the compare of compare-and-set)."""
    if not isinstance(cur, dict) or cur.get("identity") != new.get("identity"):
        return False
    try:
        rev, mine = int(cur["rev"]), int(new["rev"])
    except (KeyError, TypeError, ValueError):
        return False
    return rev > mine or (rev == mine and cur != new)


# The same compare as `superseded`, in Redis: ARGV[1] is the state as JSON with sorted keys, so
# the same state saved again is the same string.
_CAS = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, d = pcall(cjson.decode, cur)
  if ok and type(d) == 'table' and d['identity'] == ARGV[2] and tonumber(d['rev']) then
    local rev, mine = tonumber(d['rev']), tonumber(ARGV[3])
    if rev > mine or (rev == mine and cur ~= ARGV[1]) then
      return 0
    end
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
