"""A bounded memo for hot-path lookups (parsed paths, encoded header blocks).

What must always hold: the memo never holds more than `limit` entries. When full it is simply
emptied: the keys are few in practice, and the bound only stops a client that varies them from
growing memory; a cleared memo refills from the next calls.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(dict[K, V]):
    """A dict (so `get` stays a C call) whose `put` empties it when it is full."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
