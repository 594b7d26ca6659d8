"""One entry of the top-level `discovery:` list: replicas found through DNS (Envoy's STRICT_DNS
cluster, HAProxy's `server-template` with `resolvers`).

What must always hold: an entry names exactly one query (`dns`: A and AAAA records, or `srv`:
SRV records), its ports are 1..65535, and the replicas it yields are valid `Replica` objects
(a REST or a gRPC port, or both).

Ports with `srv`: an SRV record carries a host and a port, and that port is the replica's **gRPC**
port (the record to use is `_grpc._tcp.NAME`, e.g. a Kubernetes headless Service port named
`grpc`). `grpc_port` is then refused (the records give it); `rest_port` and `metrics_port`, when
set, apply to every address the SRV targets resolve to. SRV priority and weight are not used:
every target is a replica, weighted by `weight`.

Names are looked up as fully qualified names (no search list), so every gateway that asks the
same servers finds the same replicas.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator, model_validator

from gateway.config.base import Frozen

_NAME = re.compile(r"[\w.-]+")
# A DNS name: labels of letters, digits, '-' and '_' (for `_grpc._tcp`), dot-separated,
# an optional final dot.
_DNS_NAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")


class Discovery(Frozen):
    """Replicas at every address a DNS name resolves to, re-resolved every `interval_s` (or
    sooner when the records' TTL is shorter, never more often than once a second)."""

    name: str  # prefix of the replica names: NAME-ADDRESS (dns) or NAME-ADDRESS-PORT (srv)
    dns: str | None = None  # A/AAAA records of this name
    srv: str | None = None  # SRV records of this name; their port is the gRPC port
    resolver: str | None = None  # IP:PORT of the DNS server to ask (None: the system's resolvers)
    rest_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None  # http://ADDRESS:PORT/metrics on every address
    pool: str = "default"
    capacity_rps: float | None = Field(default=None, gt=0)
    weight: float = Field(default=1.0, gt=0)
    interval_s: float = Field(default=5.0, ge=1)
    timeout_s: float = Field(default=2.0, gt=0)  # one resolution (all retries) gives up after this

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError(f"may hold only letters, digits, '_', '.' and '-', got {v!r}")
        return v

    @field_validator("dns", "srv")
    @classmethod
    def _dns_name(cls, v: str | None) -> str | None:
        if v is not None and not _DNS_NAME.fullmatch(v):
            raise ValueError(f"expected a DNS name, got {v!r}")
        return v

    @field_validator("resolver")
    @classmethod
    def _resolver(cls, v: str | None) -> str | None:
        if v is None:
            return None
        host, sep, port = v.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        try:
            ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
        except ValueError:
            ip = None
        # An IPv6 address goes in brackets, so that the port after the last ':' is unambiguous.
        if ip is None or bracketed != (ip.version == 6):
            raise ValueError(f"expected IP:PORT (an IPv6 address in brackets), got {v!r}")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"expected IP:PORT with a port 1..65535, got {v!r}")
        return v

    @field_validator("rest_port", "grpc_port", "metrics_port")
    @classmethod
    def _ports(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65535:
            raise ValueError(f"a port is 1..65535, got {v}")
        return v

    @model_validator(mode="after")
    def _query(self) -> Discovery:
        if (self.dns is None) == (self.srv is None):
            raise ValueError(f"discovery {self.name!r}: set exactly one of dns (A/AAAA records) "
                             "and srv (SRV records)")
        if self.srv is not None and self.grpc_port is not None:
            raise ValueError(f"discovery {self.name!r}: with srv, the SRV records give the gRPC "
                             "port; drop grpc_port")
        if self.dns is not None and self.rest_port is None and self.grpc_port is None:
            raise ValueError(f"discovery {self.name!r}: a replica needs rest_port or grpc_port "
                             "(or both)")
        return self

    @property
    def query(self) -> str:
        """The name this entry resolves (its `dns` or `srv` name)."""
        q = self.dns if self.dns is not None else self.srv
        assert q is not None  # _query guarantees one of them
        return q

    def resolver_address(self) -> tuple[str, int] | None:
        """(IP, port) of the configured DNS server, or None for the system's resolvers."""
        if self.resolver is None:
            return None
        host, _, port = self.resolver.rpartition(":")
        return host.strip("[]"), int(port)
