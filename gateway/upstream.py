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
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from yarl import URL

from gateway.call import Answer, Call
from gateway.config import UpstreamTls
from gateway.errors import DeadlineExceeded, ReplicaUnavailable
from gateway.replicas import ReplicaState
from gateway.wire import RestRequest, rewrite_version, upstream_path

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]

# Request headers never forwarded (hop-by-hop, or recomputed by the client library).
_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "expect",
})
# Answer headers relayed to the REST client.
_RELAY = ("content-type", "content-encoding")

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


def _grpc_options(max_message: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
    ]


def client_ssl(tls: UpstreamTls | None) -> ssl.SSLContext | None:
    """The TLS context for HTTPS to replicas (mTLS when a client certificate is configured)."""
    if tls is None or not tls.rest:
        return None
    ctx = ssl.create_default_context(cafile=tls.ca)
    if tls.cert and tls.key:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def rest_base(addr: str, tls: UpstreamTls | None) -> str:
    return f"{'https' if tls and tls.rest else 'http'}://{addr}"


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

    async def send(self, call: Call, replica: ReplicaState, version: int | None,
                   timeout: float) -> Answer:
        addr = replica.cfg.rest
        if addr is None:
            raise ReplicaUnavailable(f"replica {replica.name} has no REST address")
        req: RestRequest = call.extra  # type: ignore[assignment]
        path = upstream_path(req, version)
        headers = {k: v for k, v in call.headers.items() if k not in _HOP}
        http_method = req.http_method
        try:
            async with self._pool().request(
                http_method, URL(rest_base(addr, self._tls) + path, encoded=True),
                data=call.body if call.body else None, ssl=self._ssl,
                server_hostname=self._server_name,
                headers=headers, timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                body = await resp.read()
                relay = [(k, resp.headers[k]) for k in _RELAY if k in resp.headers]
                return Answer(resp.status, body, relay, replica=replica.name, version=version)
        except TimeoutError:
            raise DeadlineExceeded("Deadline Exceeded") from None
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
        self._max = max_message
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._creds: grpc.ChannelCredentials | None = None
        self._options = _grpc_options(max_message)
        if tls is not None:
            self._creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls.ca).read_bytes() if tls.ca else None,
                private_key=Path(tls.key).read_bytes() if tls.key else None,
                certificate_chain=Path(tls.cert).read_bytes() if tls.cert else None)
            if tls.server_name:
                self._options.append(("grpc.ssl_target_name_override", tls.server_name))

    def channel(self, addr: str) -> grpc.aio.Channel:
        ch = self._channels.get(addr)
        if ch is None:
            if self._creds is None:
                ch = grpc.aio.insecure_channel(addr, options=self._options)
            else:
                ch = grpc.aio.secure_channel(addr, self._creds, options=self._options)
            self._channels[addr] = ch
        return ch

    async def send(self, call: Call, replica: ReplicaState, version: int | None,
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
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel(addr).unary_unary(rpc_path)
        rpc = stub(body, timeout=timeout, metadata=metadata)
        try:
            reply: bytes = await rpc
        except grpc.aio.AioRpcError as err:
            initial = err.initial_metadata() or ()
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
        return answer.status == UNAVAILABLE

    async def close(self) -> None:
        chans, self._channels = list(self._channels.values()), {}
        for ch in chans:
            await ch.close()


def _md(md: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in md] if md else []
