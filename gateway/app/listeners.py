"""The gateway's listening sockets: REST and gRPC on either engine, and the admin API.

What must always hold: a drain first stops nothing (connections opened during
`limits.drain_delay_s` are served, REST answers close their connection, gRPC connections get a
graceful GOAWAY), then `close` stops accepting and gives in-flight calls the grace period.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import grpc
from aiohttp import web

from gateway.config import GatewayConfig, Tls
from gateway.core.tasks import spawn
from gateway.transport.compat.grpc_ingress import GrpcIngress
from gateway.transport.compat.rest_ingress import RestIngress
from gateway.transport.ingress import Ingress
from gateway.transport.native_grpc import GrpcListener, start_grpc_listener
from gateway.transport.native_rest import ServerLimits, start_rest_listener


def server_ssl(tls: Tls | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca:
        ctx.load_verify_locations(tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def split_hostport(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


class Listeners:
    def __init__(self, reuse_port: bool) -> None:
        self.reuse_port = reuse_port
        self.bound: dict[str, int] = {}
        # Shared by every native REST connection; a reload changes max_body in place.
        self.rest_limits = ServerLimits()
        self._rest: asyncio.AbstractServer | None = None
        self._grpc: grpc.aio.Server | GrpcListener | None = None
        self._admin: web.AppRunner | None = None

    def apply(self, cfg: GatewayConfig) -> None:
        """Settings a reload may change on live listeners."""
        self.rest_limits.max_body = cfg.limits.max_body_bytes

    async def start_rest(self, cfg: GatewayConfig, ingress: Ingress) -> None:
        if not cfg.listen.rest:
            return
        host, port = split_hostport(cfg.listen.rest)
        tls = server_ssl(cfg.listen.tls)
        self.apply(cfg)
        if cfg.listen.engine == "native":
            self._rest = await start_rest_listener(ingress, self.rest_limits, host, port,
                                                   self.reuse_port, tls)
        else:
            # Bodies are forwarded as received (gzip included): the replica decompresses them.
            compat = RestIngress(ingress, lambda: self.rest_limits.max_body)
            server = web.Server(compat.handle, access_log=None, auto_decompress=False,
                                logger=compat.server_logger())
            loop = asyncio.get_running_loop()
            self._rest = await loop.create_server(server, host, port, backlog=1024,
                                                  reuse_address=True,
                                                  reuse_port=self.reuse_port or None, ssl=tls)
        self.bound["rest"] = self._rest.sockets[0].getsockname()[1]

    async def start_grpc(self, cfg: GatewayConfig, ingress: Ingress) -> None:
        if not cfg.listen.grpc:
            return
        mx = cfg.limits.max_message_bytes
        if cfg.listen.engine == "native":
            host, port = split_hostport(cfg.listen.grpc)
            listener = await start_grpc_listener(ingress, mx, host, port, self.reuse_port,
                                                 server_ssl(cfg.listen.tls))
            self._grpc = listener
            self.bound["grpc"] = listener.port
            return
        server = grpc.aio.server(options=[
            ("grpc.max_send_message_length", mx), ("grpc.max_receive_message_length", mx),
            ("grpc.so_reuseport", int(self.reuse_port))])
        server.add_generic_rpc_handlers((GrpcIngress(ingress),))
        tls = cfg.listen.tls
        if tls is None:
            self.bound["grpc"] = server.add_insecure_port(cfg.listen.grpc)
        else:
            creds = grpc.ssl_server_credentials(
                [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
                root_certificates=Path(tls.client_ca).read_bytes() if tls.client_ca else None,
                require_client_auth=tls.client_ca is not None)
            self.bound["grpc"] = server.add_secure_port(cfg.listen.grpc, creds)
        await server.start()
        self._grpc = server

    async def start_admin(self, address: str, app: web.Application) -> None:
        host, port = split_hostport(address)
        self._admin = web.AppRunner(app, access_log=None)
        await self._admin.setup()
        site = web.TCPSite(self._admin, host, port)
        await site.start()
        server = site._server
        if isinstance(server, asyncio.AbstractServer):
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.bound["admin"] = sockets[0].getsockname()[1]

    def announce_drain(self) -> None:
        """The drain has begun: gRPC connections open now get a graceful GOAWAY (their clients
        reconnect, to another instance once the endpoint is gone); REST answers now close their
        connections (the ingress reads `draining`). New connections are still accepted."""
        if isinstance(self._grpc, GrpcListener):
            for conn in list(self._grpc.connections):
                conn.drain()

    def stop_accepting(self, grace: float) -> asyncio.Task[None] | None:
        """Close the listening sockets; the gRPC server drains its streams within `grace`."""
        if self._rest is not None:
            self._rest.close()
        if self._grpc is not None:
            return spawn(self._grpc.stop(grace), "grpc-stop")
        return None

    async def close_admin(self) -> None:
        if self._admin is not None:
            await self._admin.cleanup()
