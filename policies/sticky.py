"""Session stickiness: consistent hashing with bounded loads, identical in every gateway process.

A call carrying a sticky key (e.g. the ``x-session-id`` header) should reach the same replica every
time, so that replica-side caches stay warm, while no replica is handed more than ``c`` times its
fair share of the keyspace ("Consistent Hashing with Bounded Loads", Mirrokni, Thorup and
Zadimoghaddam, SODA 2018). Several gateway processes must agree without talking to each other, so
the bounded-load rule is applied to a fixed keyspace rather than to live per-key counts:

1. the keyspace is ``buckets`` fixed buckets (default 4096); a key's bucket is a stable hash of it;
2. every replica gets virtual nodes on a 64-bit ring (count proportional to its weight) and every
   bucket a point on the same ring, all placed by BLAKE2b (never Python's per-process ``hash()``);
3. buckets are assigned in index order, each to the first replica clockwise from its point whose
   assigned count is still below ``ceil(c * buckets * weight / total_weight)``.

The result depends only on the key and the set of (name, weight) of the healthy replicas, so two
processes, or one process after a restart, build the same table. Building is
O(buckets * log(ring)) and happens once per distinct healthy set (``StickyTableCache``); a lookup
is one hash and one tuple index.

Why not a library: the ``consistent-hash`` package on PyPI is Python-2-only and does not import on
3.11, and ``uhashring`` has neither bounded loads nor a precomputed table we can check for
cross-process determinism; the algorithm above is short enough to own.

What must always hold:
- no replica owns more than ``ceil(c * buckets * weight / total_weight)`` buckets;
- adding or removing one of N replicas remaps about 1/N of the keys (the tests bound it);
- the same members give the same table in any process, whatever PYTHONHASHSEED is;
- ``StickyPolicy`` only reorders its candidates: the sticky replica first, then the fallback's order.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

from policies.base import Balancer, PickContext, ReplicaView

Members = frozenset[tuple[str, float]]
"""The healthy set a table is built for: (replica name, weight) pairs."""


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


# Session keys repeat call after call; remembering their hashes saves a BLAKE2b per call. Bounded
# (cleared when full) so that a client cycling through keys cannot grow it.
_KEY_HASHES: dict[str, int] = {}
_KEY_HASHES_MAX = 16_384


def _key_hash(key: str) -> int:
    h = _KEY_HASHES.get(key)
    if h is None:
        if len(_KEY_HASHES) >= _KEY_HASHES_MAX:
            _KEY_HASHES.clear()
        # surrogatepass: header values decoded with surrogateescape must not raise here.
        h = _KEY_HASHES[key] = _hash64(key.encode("utf-8", "surrogatepass"))
    return h


class StickyTable:
    """An immutable bucket -> replica-name table for one set of members."""

    __slots__ = ("_owners", "_counts", "_caps")

    def __init__(
        self, members: Iterable[tuple[str, float]], *, buckets: int = 4096, c: float = 1.25, vnodes: int = 128
    ) -> None:
        ordered = sorted(members)
        names = [name for name, _ in ordered]
        if not ordered:
            raise ValueError("a sticky table needs at least one replica")
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique, got {names}")
        if any(not (w > 0.0 and math.isfinite(w)) for _, w in ordered):
            raise ValueError(f"replica weights must be finite and > 0, got {ordered}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        if not (c >= 1.0 and math.isfinite(c)):
            raise ValueError(f"c (the load bound) must be >= 1, got {c!r}")
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")

        total = sum(w for _, w in ordered)
        n = len(ordered)
        caps = [math.ceil(c * buckets * w / total) for _, w in ordered]
        # Ring: `vnodes` points for an average-weight replica, proportionally more or fewer by weight,
        # so the unbounded ring already hands out roughly weight-proportional shares.
        ring: list[tuple[int, int]] = []
        for idx, (name, w) in enumerate(ordered):
            count = max(1, round(vnodes * w * n / total))
            prefix = name.encode("utf-8", "surrogatepass") + b"\x00"
            ring.extend((_hash64(prefix + v.to_bytes(4, "big")), idx) for v in range(count))
        ring.sort()  # ties on a 64-bit collision fall back to the name order: still deterministic
        points = [pos for pos, _ in ring]
        point_owner = [idx for _, idx in ring]
        n_points = len(points)

        counts = [0] * n
        owner_idx = [0] * buckets
        for b in range(buckets):
            k = bisect_left(points, _hash64(b"bucket\x00" + b.to_bytes(4, "big")))
            # Terminates: the caps sum to at least c * buckets >= buckets.
            while True:
                if k == n_points:
                    k = 0
                idx = point_owner[k]
                if counts[idx] < caps[idx]:
                    break
                k += 1
            counts[idx] += 1
            owner_idx[b] = idx
        self._owners: tuple[str, ...] = tuple(names[i] for i in owner_idx)
        self._counts: dict[str, int] = {names[i]: counts[i] for i in range(n)}
        self._caps: dict[str, int] = {names[i]: caps[i] for i in range(n)}

    @property
    def buckets(self) -> int:
        return len(self._owners)

    @property
    def owners(self) -> tuple[str, ...]:
        """Replica name per bucket, in bucket order."""
        return self._owners

    @property
    def counts(self) -> Mapping[str, int]:
        """Buckets owned per replica."""
        return self._counts

    @property
    def caps(self) -> Mapping[str, int]:
        """The bounded-load cap per replica: ``ceil(c * buckets * weight / total_weight)``."""
        return self._caps

    def bucket_of(self, key: str) -> int:
        return _key_hash(key) % len(self._owners)

    def lookup(self, key: str) -> str:
        """The replica name that owns ``key``."""
        owners = self._owners
        return owners[_key_hash(key) % len(owners)]


class StickyTableCache:
    """Tables by healthy set, built on first use; holds at most ``max_tables`` (oldest dropped).

    Health flaps alternate between a handful of sets, so a small cache avoids rebuilding on every
    flap while staying bounded.
    """

    __slots__ = ("_buckets", "_c", "_vnodes", "_max_tables", "_tables")

    def __init__(
        self, *, buckets: int = 4096, c: float = 1.25, vnodes: int = 128, max_tables: int = 16
    ) -> None:
        if max_tables < 1:
            raise ValueError(f"max_tables must be >= 1, got {max_tables}")
        StickyTable([("probe", 1.0)], buckets=buckets, c=c, vnodes=vnodes)  # validate parameters now
        self._buckets = buckets
        self._c = c
        self._vnodes = vnodes
        self._max_tables = max_tables
        self._tables: dict[Members, StickyTable] = {}

    def __len__(self) -> int:
        return len(self._tables)

    def get(self, members: Members) -> StickyTable:
        table = self._tables.get(members)
        if table is None:
            table = StickyTable(members, buckets=self._buckets, c=self._c, vnodes=self._vnodes)
            if len(self._tables) >= self._max_tables:
                del self._tables[next(iter(self._tables))]
            self._tables[members] = table
        return table


class StickyPolicy:
    """Ranks the key's sticky replica first, then the fallback balancer's order for the rest.

    Without a key (``ctx.key`` None or empty) or with fewer than two candidates it is the fallback.
    The fallback is consulted on every keyed call with three or more candidates too (it supplies
    the retry order), so a stateful fallback such as ``round_robin`` advances its rotation on those
    calls as well; with two, the order after the sticky replica is forced and it is not asked.
    """

    __slots__ = ("_fallback", "_tables", "_last_candidates", "_last_members")

    def __init__(self, fallback: Balancer, tables: StickyTableCache | None = None) -> None:
        self._fallback = fallback
        self._tables = tables if tables is not None else StickyTableCache()
        self._last_candidates: Sequence[ReplicaView] | None = None
        self._last_members: Members = frozenset()

    @property
    def fallback(self) -> Balancer:
        return self._fallback

    def rank(self, candidates: Sequence[ReplicaView], ctx: PickContext) -> list[ReplicaView]:
        key = ctx.key
        if not key or len(candidates) <= 1:
            return self._fallback.rank(candidates, ctx)
        # The gateway hands the same candidate list object until its replica set changes, so
        # the members key is built once per list, not once per call.
        if candidates is not self._last_candidates:
            self._last_members = frozenset([(r.name, r.weight) for r in candidates])
            self._last_candidates = candidates
        sticky = self._tables.get(self._last_members).lookup(key)
        if len(candidates) == 2:
            # The order after the sticky replica is forced: the fallback has nothing to decide.
            a, b = candidates
            if a.name == sticky:
                return [a, b]
            if b.name == sticky:
                return [b, a]
        ranked = self._fallback.rank(candidates, ctx)
        for i, replica in enumerate(ranked):
            if replica.name == sticky:
                if i:
                    del ranked[i]
                    ranked.insert(0, replica)
                break
        return ranked
