"""How the gateway reaches a replica outside the request path's engines: the TLS context and base
URL for HTTPS to replicas, and grpc.aio channels (one per address) for health probes and the
compat forwarder.

What must always hold: channels allow messages of `max_message` bytes each way (TF Serving's
limit is 2 GiB; grpcio's default receive limit of 4 MiB would cut large answers) and never retry
on their own: retries are the pipeline's decision.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc

from gateway.config import UpstreamTls


def grpc_options(max_message: int) -> list[tuple[str, Any]]:
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


class Channels:
    """grpc.aio channels by address, plain or with the upstream TLS credentials."""

    def __init__(self, max_message: int, tls: UpstreamTls | None = None) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._creds: grpc.ChannelCredentials | None = None
        self._options = grpc_options(max_message)
        if tls is not None:
            self._creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls.ca).read_bytes() if tls.ca else None,
                private_key=Path(tls.key).read_bytes() if tls.key else None,
                certificate_chain=Path(tls.cert).read_bytes() if tls.cert else None)
            if tls.server_name:
                self._options.append(("grpc.ssl_target_name_override", tls.server_name))

    def get(self, addr: str) -> grpc.aio.Channel:
        ch = self._channels.get(addr)
        if ch is None:
            if self._creds is None:
                ch = grpc.aio.insecure_channel(addr, options=self._options)
            else:
                ch = grpc.aio.secure_channel(addr, self._creds, options=self._options)
            self._channels[addr] = ch
        return ch

    async def close(self) -> None:
        chans, self._channels = list(self._channels.values()), {}
        for ch in chans:
            await ch.close()
