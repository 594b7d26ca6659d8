"""The protocol-neutral request (`Call`) and answer (`Answer`) that flow through the pipeline.

Ingresses turn REST requests and gRPC calls into a `Call`; upstream forwarders turn a `Call`
plus a chosen replica and version back into protocol bytes. Nothing between them depends on the
protocol except through the `Forwarder` seam.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

REPLICA_HEADER = "x-infergate-replica"

# Methods a replica may execute more than once without harm: retried and hedged.
IDEMPOTENT = frozenset({"predict", "classify", "regress", "multi_inference", "metadata", "status"})

# Which kind of upstream try runs in this context: "first", "retry", "hedge" or "shadow". Set
# by the dispatcher (retries, the hedge's copy) and the shadow step (its own task); read by
# tracing, which names it on each try's span.
TRY_KIND: ContextVar[str] = ContextVar("infergate_try_kind", default="first")


@dataclass(slots=True)
class Call:
    protocol: str  # "rest" | "grpc"
    method: str  # predict | classify | regress | multi_inference | metadata | status | reload
    model: str | None
    version: int | None
    label: str | None
    signature: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    deadline: float | None  # monotonic seconds; None: the model's default timeout applies
    extra: object = None  # ingress-specific data (the REST target, the gRPC method path)
    peer: str = ""  # the client's address (rate limits of failed authentication)
    tenant: str = ""  # set by admission: the tenant the call is counted against


@dataclass(slots=True)
class Answer:
    """An answer in the caller's protocol.

    REST: `status` is the HTTP status and `headers` the response headers to replay.
    gRPC: `status` is the numeric status code (0 = OK), `headers` the initial metadata,
    `trailers` the trailing metadata and `details` the status message.
    """

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: tuple[tuple[str, str | bytes], ...] = ()
    details: str = ""
    replica: str = ""
    version: int | None = None
    cache: str = "miss"
    arm: str = ""  # the split arm that chose the target (for traffic stats and rollouts)
    tier: str = "primary"  # primary | fallback:N | stale (x-infergate-tier)

    @classmethod
    def from_cache(cls, status: int, body: bytes, headers: tuple[tuple[str, str], ...],
                   version: int, arm: str) -> Answer:
        """Replay a cached answer; the serving replica was stored as a pseudo-header."""
        replica = ""
        replay: list[tuple[str, str]] = []
        for k, v in headers:
            if k == REPLICA_HEADER:
                replica = v
            else:
                replay.append((k, v))
        return cls(status, body, replay, replica=replica, version=version, cache="hit", arm=arm)

    def cache_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers to store with a cached copy (the replica kept as a pseudo-header)."""
        return tuple(self.headers) + ((REPLICA_HEADER, self.replica),)

    def ok(self, protocol: str) -> bool:
        return self.status == 0 if protocol == "grpc" else 200 <= self.status < 300

    def code_label(self, protocol: str) -> str:
        return str(self.status)


def api_key_of(headers: Mapping[str, str]) -> str | None:
    """The API key a call carries: x-api-key, else Authorization: Bearer; None without one."""
    given = headers.get("x-api-key")
    if given is None:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else None
    return given or None


class Addresses(Protocol):
    @property
    def rest(self) -> str | None: ...

    @property
    def grpc(self) -> str | None: ...


class Upstream(Protocol):
    """A replica as a forwarder sees it: a name and its addresses (gateway.fleet's
    ReplicaState is one)."""

    @property
    def name(self) -> str: ...

    @property
    def cfg(self) -> Addresses: ...


class Forwarder(Protocol):
    """Sends a call to one replica in the call's protocol. Connection failures raise
    ReplicaUnavailable; a remote error status is an Answer, not an exception."""

    async def send(self, call: Call, replica: Upstream, version: int | None,
                   timeout: float) -> Answer: ...

    def retryable(self, answer: Answer) -> bool: ...

    async def close(self) -> None: ...
