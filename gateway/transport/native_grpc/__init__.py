"""The native gRPC engine: a small HTTP/2 layer (frames, HPACK over the hpack package's tables,
flow control, limits) with a gRPC server and a multiplexed gRPC client on top.
`start_grpc_listener` is what gateway.app.gateway calls for `engine: native`.

What must always hold: the rest of the gateway sees only `Call`, `Answer`, the pipeline and the
error table; no class of this package leaks out of it except the listener and the forwarder.
"""

from __future__ import annotations

import asyncio
import ssl

from gateway.transport.ingress import Ingress
from gateway.transport.native_grpc.grpc_client import NativeGrpcForwarder
from gateway.transport.native_grpc.grpc_server import NativeGrpcIngress
from gateway.transport.native_grpc.hpack import HpackEncoder
from gateway.transport.native_grpc.modelspec import SpecMemo
from gateway.transport.native_grpc.server import H2App, H2ServerConnection
from gateway.transport.native_grpc.stream import H2Limits

__all__ = ["GrpcListener", "H2Limits", "NativeGrpcForwarder", "NativeGrpcIngress",
           "serve_h2", "start_grpc_listener"]


class GrpcListener:
    """A listening socket and its connections; `stop(grace)` drains them gracefully."""

    def __init__(self, server: asyncio.Server, connections: set[H2ServerConnection]) -> None:
        self.server = server
        self.connections = connections

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, send GOAWAY on every connection, wait up to `grace` seconds for
        their streams to finish, then close whatever is left."""
        self.server.close()
        for conn in list(self.connections):
            conn.drain()
        loop = asyncio.get_running_loop()
        end = loop.time() + (grace or 0.0)
        while self.connections and loop.time() < end:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.connections.clear()


async def serve_h2(app: H2App, host: str, port: int, limits: H2Limits, encoder: HpackEncoder,
                   reuse_port: bool = False, backlog: int = 1024,
                   ssl_context: ssl.SSLContext | None = None) -> GrpcListener:
    """Listen on host:port; with `ssl_context`, TLS offering only "h2" by ALPN (gRPC's rule)."""
    loop = asyncio.get_running_loop()
    connections: set[H2ServerConnection] = set()
    if ssl_context is not None:
        ssl_context.set_alpn_protocols(["h2"])
    server = await loop.create_server(
        lambda: H2ServerConnection(app, limits, encoder, connections), host, port,
        backlog=backlog, reuse_address=True, reuse_port=reuse_port or None, ssl=ssl_context)
    return GrpcListener(server, connections)


async def start_grpc_listener(ingress: Ingress, max_message: int, host: str, port: int,
                              reuse_port: bool = False,
                              ssl_context: ssl.SSLContext | None = None) -> GrpcListener:
    """The TF Serving gRPC surface on the native engine (TLS when `ssl_context`)."""
    encoder = HpackEncoder()
    fwd = ingress.fwd
    specs = fwd.specs if isinstance(fwd, NativeGrpcForwarder) else SpecMemo()
    return await serve_h2(NativeGrpcIngress(ingress, max_message, encoder, specs), host, port,
                          H2Limits(), encoder, reuse_port, ssl_context=ssl_context)
