"""Pooled connections to replicas: one HTTP keep-alive pool and one gRPC channel per replica.

This is the outbound transport seam. The pipeline hands a `Call`, a replica and a resolved
version to a forwarder here and gets an `Answer` back; how bytes travel is private to this
module, so a leaner transport can replace it without touching routing.

What must always hold: request bytes are forwarded untouched except the version (REST path;
gRPC ModelSpec); answer bytes are relayed untouched; a connection-level failure raises
ReplicaUnavailable, and a replica's own error comes back as an Answer.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
import grpc
from yarl import URL

from gateway.config import UpstreamTls
from gateway.core.call import Answer, Call, Upstream
from gateway.core.errors import (
    ConnectFailed,
    DeadlineExceeded,
    ReplicaUnavailable,
    rest_error_body,
)
from gateway.core.wire import RestRequest, rewrite_version, upstream_path
from gateway.fleet.reach import Channels, client_ssl, rest_base
from gateway.transport.headers import HOP_BY_HOP, RELAYED

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
CANCELLED = grpc.StatusCode.CANCELLED.value[0]


# gRPC metadata the transport owns.
_GRPC_SKIP = frozenset({"user-agent", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
                        "content-type", "te"})

Metadata = tuple[tuple[str, str | bytes], ...]


class GrpcMethod(str):
    """A gRPC method path, as Call.extra holds it for gRPC, that also carries the caller's
    metadata exactly as received. Call.headers keeps one text value per name (what routing
    reads); a proxy must also forward binary (-bin) values and repeated names, in order."""

    metadata: Metadata = ()

    @classmethod
    def of(cls, path: str, metadata: Metadata) -> GrpcMethod:
        method = cls(path)
        method.metadata = metadata
        return method


class RestForwarder:
    """Forwards REST calls over a shared aiohttp keep-alive pool."""

    def __init__(self, tls: UpstreamTls | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tls = tls
        self._ssl: ssl.SSLContext | bool = client_ssl(tls) or True
        self._server_name = tls.server_name if tls and tls.rest else None

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                               enable_cleanup_closed=True),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def send(self, call: Call, replica: Upstream, version: int | None,
                   timeout: float) -> Answer:
        addr = replica.cfg.rest
        if addr is None:
            raise ReplicaUnavailable(f"replica {replica.name} has no REST address")
        req: RestRequest = call.extra  # type: ignore[assignment]
        path = upstream_path(req, version)
        if "#" in path:
            # aiohttp's client cannot send a '#' (it starts a URL's fragment); no TF Serving path
            # has one, and TF Serving answers such a path as it answers every unmatched one.
            return Answer(400, rest_error_body(f"Malformed request: {req.http_method} {path}"),
                          [("content-type", "application/json")], replica=replica.name)
        headers = {k: v for k, v in call.headers.items() if k not in HOP_BY_HOP}
        http_method = req.http_method
        try:
            async with self._pool().request(
                http_method, URL(rest_base(addr, self._tls) + path, encoded=True),
                data=call.body if call.body else None, ssl=self._ssl,
                server_hostname=self._server_name,
                headers=headers, timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                body = await resp.read()
                relay = [(k, resp.headers[k]) for k in RELAYED if k in resp.headers]
                return Answer(resp.status, body, relay, replica=replica.name, version=version)
        except TimeoutError:
            raise DeadlineExceeded("Deadline Exceeded") from None
        except aiohttp.ClientSSLError as exc:  # a TLS failure is not a replica that is gone
            raise ReplicaUnavailable(f"replica {replica.name} TLS failed: {type(exc).__name__}") from None
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"replica {replica.name} unreachable: {type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ReplicaUnavailable(f"replica {replica.name} unreachable: {type(exc).__name__}") from None

    def retryable(self, answer: Answer) -> bool:
        return answer.status == 503

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class GrpcForwarder:
    """Forwards gRPC calls as raw bytes over one channel per replica."""

    def __init__(self, max_message: int, tls: UpstreamTls | None = None) -> None:
        self._channels = Channels(max_message, tls)

    async def send(self, call: Call, replica: Upstream, version: int | None,
                   timeout: float) -> Answer:
        addr = replica.cfg.grpc
        if addr is None:
            raise ReplicaUnavailable(f"replica {replica.name} has no gRPC address")
        rpc_path: str = call.extra  # type: ignore[assignment]
        body = call.body
        if version is not None and call.model is not None and call.method != "status":
            body = rewrite_version(body, version, multi=call.method == "multi_inference",
                                   model=call.model)
        received: Any = getattr(call.extra, "metadata", None)
        pairs = received if received is not None else call.headers.items()
        metadata = tuple((k, v) for k, v in pairs if k not in _GRPC_SKIP and not k.startswith(":"))
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channels.get(addr).unary_unary(
            rpc_path)
        rpc = stub(body, timeout=timeout, metadata=metadata)
        try:
            reply: bytes = await rpc
        except grpc.aio.AioRpcError as err:
            initial = err.initial_metadata() or ()
            if (err.code() == grpc.StatusCode.UNAVAILABLE and not initial
                    and "refused" in (err.details() or "").lower()):
                # grpcio's "failed to connect to all addresses; ...: Connection refused": the
                # request never left. (A TLS handshake failure also fails to connect, but the
                # replica is there: that one stays an ordinary UNAVAILABLE answer.)
                raise ConnectFailed(f"replica {replica.name} unreachable: {err.details()}") from None
            trailing = err.trailing_metadata() or ()
            return Answer(err.code().value[0], b"", _md(initial), tuple(_md(trailing)),
                          err.details() or "", replica=replica.name, version=version)
        except asyncio.CancelledError:
            rpc.cancel()
            raise
        initial = await rpc.initial_metadata()
        trailing = await rpc.trailing_metadata()
        return Answer(0, reply, _md(initial), tuple(_md(trailing)), replica=replica.name,
                      version=version)

    def retryable(self, answer: Answer) -> bool:
        # CANCELLED from a replica: it cut the call off (shutting down); see NativeGrpcForwarder.
        return answer.status == UNAVAILABLE or answer.status == CANCELLED

    async def close(self) -> None:
        await self._channels.close()


def _md(md: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in md] if md else []
