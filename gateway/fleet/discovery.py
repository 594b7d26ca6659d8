"""Replicas found through DNS: the `discovery:` entries of the config, resolved now and again
(Envoy's STRICT_DNS cluster, HAProxy's `server-template` with `resolvers`).

What must always hold:
- a replica's name is a function of (entry name, address[, SRV port]) only: `tfserving-10.0.0.7`,
  `tfserving-fd00--7` (IPv6: ':' becomes '-'), `tfserving-10.0.0.7-8500` (SRV), so every gateway
  that resolves the same records names the replicas identically (sticky hashing hashes names);
- `replicas()` is sorted the same way everywhere: by entry name, then address, then port;
- a failed answer (timeout, SERVFAIL, NXDOMAIN, no usable server) or an empty one never removes
  replicas: the entry keeps its last known addresses and is marked stale; a warning is logged when
  an entry turns stale and a note when it recovers, never once per interval;
- `on_change` is called with the whole discovered set, only when that set changed, and only by
  `resolve_once` and the background loop (never by `configure`: a reload reads `replicas()`).

Each entry is resolved again after `interval_s`, or after the smallest TTL of its answer when
that is shorter, never sooner than one second. Names are asked as fully qualified names (no
search list) with no answer cache of our own. Nothing here touches the network at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset

from gateway.config import ConfigError, Replica
from gateway.config.discovery import Discovery
from gateway.core.tasks import cancel_all, spawn

log = logging.getLogger("infergate.discovery")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
MIN_DELAY_S = 1.0  # the shortest wait between two resolutions of one entry, whatever the TTL


@dataclass(frozen=True)
class Target:
    """One discovered endpoint: an address, and with SRV the port the record gave (gRPC)."""

    ip: IP
    port: int | None = None

    def sort_key(self) -> tuple[int, int, int]:
        return self.ip.version, int(self.ip), self.port or 0

    def host(self) -> str:
        return f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)

    def __str__(self) -> str:
        return self.host() if self.port is None else f"{self.host()}:{self.port}"


def replica_name(prefix: str, target: Target) -> str:
    """`PREFIX-ADDRESS[-PORT]`; an IPv6 address's ':' become '-' (canonical IPv6 text holds no
    '-' and IPv4 text no ':', so distinct addresses keep distinct names)."""
    addr = str(target.ip).replace(":", "-")
    return f"{prefix}-{addr}" if target.port is None else f"{prefix}-{addr}-{target.port}"


def replica_for(entry: Discovery, target: Target) -> Replica:
    host = target.host()
    grpc_port = target.port if entry.srv is not None else entry.grpc_port
    return Replica(
        name=replica_name(entry.name, target),
        rest=None if entry.rest_port is None else f"{host}:{entry.rest_port}",
        grpc=None if grpc_port is None else f"{host}:{grpc_port}",
        metrics=None if entry.metrics_port is None else f"http://{host}:{entry.metrics_port}/metrics",
        pool=entry.pool,
        capacity_rps=entry.capacity_rps,
        weight=entry.weight,
    )


@dataclass
class _Lookup:
    targets: set[Target] = field(default_factory=set)
    ttl: float | None = None

    def add_ttl(self, ttl: float | None) -> None:
        if ttl is not None:
            self.ttl = ttl if self.ttl is None else min(self.ttl, ttl)


def _answer_ttl(answer: dns.resolver.Answer) -> float | None:
    # The whole chain counts: a CNAME with a short TTL bounds the A records behind it.
    ttls = [rrset.ttl for rrset in answer.response.answer]
    return float(min(ttls)) if ttls else None


def _addresses(rrset: dns.rrset.RRset) -> set[IP]:
    return {ipaddress.ip_address(rdata.address) for rdata in rrset}


def _build_resolver(entry: Discovery) -> dns.asyncresolver.Resolver:
    server = entry.resolver_address()
    if server is None:
        resolver = dns.asyncresolver.Resolver()  # /etc/resolv.conf (may raise: no configuration)
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.timeout = entry.timeout_s
    resolver.lifetime = entry.timeout_s
    resolver.cache = None  # every round asks the servers; their TTLs drive our schedule
    return resolver


async def _lookup_host(resolver: dns.asyncresolver.Resolver, name: str | dns.name.Name) -> _Lookup:
    """A and AAAA of `name`, asked together. NODATA for one family is fine; any failure of
    either query fails the whole lookup (half a fleet is not an answer)."""
    found = _Lookup()
    answers = await asyncio.gather(
        resolver.resolve(name, "A", raise_on_no_answer=False, search=False),
        resolver.resolve(name, "AAAA", raise_on_no_answer=False, search=False),
    )
    for answer in answers:
        if answer.rrset is not None:
            found.targets |= {Target(ip) for ip in _addresses(answer.rrset)}
            found.add_ttl(_answer_ttl(answer))
    return found


async def _lookup_srv(resolver: dns.asyncresolver.Resolver, name: str) -> _Lookup:
    """SRV records of `name`, each target's addresses taken from the additional section when
    the server put them there (Kubernetes does), otherwise asked for."""
    found = _Lookup()
    answer = await resolver.resolve(name, "SRV", raise_on_no_answer=False, search=False)
    if answer.rrset is None:
        return found
    found.add_ttl(_answer_ttl(answer))
    extra: dict[dns.name.Name, set[IP]] = {}
    for rrset in answer.response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            extra.setdefault(rrset.name, set()).update(_addresses(rrset))
            found.add_ttl(float(rrset.ttl))
    wanted = {(rdata.target, int(rdata.port)) for rdata in answer.rrset
              if rdata.target != dns.name.root}  # target "." = "no service here" (RFC 2782)
    to_ask = sorted({target for target, _ in wanted if target not in extra})
    asked = await asyncio.gather(*(_lookup_host(resolver, t) for t in to_ask))
    for target, lookup in zip(to_ask, asked, strict=True):
        extra[target] = {t.ip for t in lookup.targets}
        found.add_ttl(lookup.ttl)
    for target, port in wanted:
        found.targets |= {Target(ip, port) for ip in extra.get(target, set())}
    return found


@dataclass
class _Entry:
    """What is known of one entry; survives a reload that keeps its (name, query)."""

    config: Discovery
    resolver: dns.asyncresolver.Resolver | None = None
    targets: frozenset[Target] = frozenset()
    last_ok: float | None = None  # wall-clock time of the last usable answer
    last_error: str | None = None  # why the last answer was not used (None after a good one)
    stale: bool = False
    ttl: float | None = None
    next_at: float = 0.0  # monotonic time of the next resolution (0: now)

    @property
    def key(self) -> tuple[str, str]:
        return self.config.name, self.config.query

    def delay(self) -> float:
        if self.stale or self.ttl is None:
            return self.config.interval_s
        return max(MIN_DELAY_S, min(self.config.interval_s, self.ttl))


class DnsDiscovery:
    """Resolves the `discovery:` entries and hands the replicas they yield to `on_change`."""

    def __init__(self, entries: Sequence[Discovery], on_change: Callable[[list[Replica]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_change = on_change
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._published: list[Replica] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None  # made inside the loop, by start()
        self._first_round: asyncio.Event | None = None
        self.configure(entries)

    def configure(self, entries: Sequence[Discovery]) -> None:
        """Take new entries (a reload). An entry whose (name, query) is unchanged keeps its known
        addresses and schedule; new ones are resolved at once by the loop. Does not call
        `on_change`: the reload reads `replicas()`. Refuses entries with repeated names."""
        names = [e.name for e in entries]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"discovery: names must be unique; repeated: {repeated}")
        now = self._clock()
        fresh: dict[tuple[str, str], _Entry] = {}
        for config in entries:
            state = self._entries.get((config.name, config.query))
            if state is None:
                state = _Entry(config)
            else:
                state.next_at = min(state.next_at, now + config.interval_s)
                state.config = config
                state.resolver = None  # rebuilt from the new settings on the next resolution
            fresh[state.key] = state
        self._entries = fresh
        self._published = self.replicas()
        if self._wake is not None:
            self._wake.set()

    def replicas(self) -> list[Replica]:
        """Every discovered replica, sorted by entry name, address, port."""
        out: list[Replica] = []
        for state in sorted(self._entries.values(), key=lambda s: s.config.name):
            for target in sorted(state.targets, key=Target.sort_key):
                out.append(replica_for(state.config, target))
        return out

    def status(self) -> list[dict[str, Any]]:
        """Per entry: name, type, query, resolver, addresses, last_ok (wall time), last_error,
        stale, ttl_s and next_in_s (seconds until the next resolution)."""
        now = self._clock()
        return [
            {
                "name": s.config.name,
                "type": "srv" if s.config.srv is not None else "dns",
                "query": s.config.query,
                "resolver": s.config.resolver or "system",
                "addresses": [str(t) for t in sorted(s.targets, key=Target.sort_key)],
                "last_ok": s.last_ok,
                "last_error": s.last_error,
                "stale": s.stale,
                "ttl_s": s.ttl,
                "next_in_s": max(0.0, s.next_at - now),
            }
            for s in sorted(self._entries.values(), key=lambda s: s.config.name)
        ]

    async def resolve_once(self) -> bool:
        """Resolve every entry now; call `on_change` if the discovered set changed. An exception
        from `on_change` propagates and the change is offered again next time."""
        await self._resolve(list(self._entries.values()))
        return self._publish()

    async def start(self, wait_s: float = 5.0) -> None:
        """Resolve every entry (waiting at most `wait_s`: a slow DNS server delays no start
        beyond it), then keep resolving in the background."""
        self._wake = asyncio.Event()
        self._first_round = asyncio.Event()
        self._tasks.append(spawn(self._run(), "dns-discovery"))
        try:
            async with asyncio.timeout(wait_s):
                await self._first_round.wait()
        except TimeoutError:
            log.warning("DNS discovery: first resolution not done after %.1fs; starting without it",
                        wait_s)

    async def close(self) -> None:
        await cancel_all(self._tasks)
        self._tasks.clear()

    async def _run(self) -> None:
        assert self._wake is not None and self._first_round is not None
        while True:
            self._wake.clear()
            due = [s for s in self._entries.values() if s.next_at <= self._clock()]
            if due:
                await self._resolve(due)
                try:
                    self._publish()
                except Exception as exc:  # the receiver's bug must not end discovery
                    log.error("DNS discovery: on_change failed: %r", exc, exc_info=exc)
            self._first_round.set()
            wait = min((s.next_at for s in self._entries.values()), default=None)
            timeout = None if wait is None else max(0.0, wait - self._clock())
            # A reload (configure) sets _wake so that new entries are resolved at once.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _publish(self) -> bool:
        current = self.replicas()
        if current == self._published:
            return False
        self._on_change(current)
        self._published = current
        return True

    async def _resolve(self, states: list[_Entry]) -> None:
        await asyncio.gather(*(self._resolve_entry(s) for s in states))

    async def _resolve_entry(self, state: _Entry) -> None:
        config = state.config
        try:
            if state.resolver is None:
                state.resolver = _build_resolver(config)
            if config.srv is not None:
                found = await _lookup_srv(state.resolver, config.srv)
            else:
                found = await _lookup_host(state.resolver, config.query)
        except dns.exception.DNSException as exc:
            self._failed(state, str(exc) or type(exc).__name__)
        else:
            if not found.targets:
                # An empty answer is as likely a broken zone as a fleet scaled to zero: keep the
                # known replicas (their health checks say whether they still serve).
                kind = "SRV" if config.srv is not None else "A/AAAA"
                self._failed(state, f"empty answer: no {kind} records for {config.query}")
            else:
                if state.stale:
                    log.info("DNS discovery %s: %s answers again (%d addresses)",
                             config.name, config.query, len(found.targets))
                state.targets = frozenset(found.targets)
                state.ttl = found.ttl
                state.last_ok = time.time()
                state.last_error = None
                state.stale = False
        state.next_at = self._clock() + state.delay()

    def _failed(self, state: _Entry, reason: str) -> None:
        if not state.stale:
            log.warning("DNS discovery %s: %s failed (%s); keeping the %d known addresses",
                        state.config.name, state.config.query, reason, len(state.targets))
        state.stale = True
        state.last_error = reason
