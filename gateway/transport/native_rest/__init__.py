"""The native REST engine: an HTTP/1.1 server on asyncio protocols and httptools, and an own
keep-alive upstream pool. `start_rest_listener` is what gateway.app.gateway calls for `engine: native`.

What must always hold: this package sees the rest of the gateway only through `Call`, `Answer`,
the pipeline and the error table; nothing outside it depends on its classes.
"""

from __future__ import annotations

import asyncio
import ssl

from gateway.transport.ingress import Ingress
from gateway.transport.native_rest.cork import Cork
from gateway.transport.native_rest.forwarder import NativeRestForwarder
from gateway.transport.native_rest.http1 import HttpRequest, RestApp, ServerLimits
from gateway.transport.native_rest.ingress import NativeRestIngress
from gateway.transport.native_rest.server import HttpServerProtocol

__all__ = ["HttpRequest", "HttpServerProtocol", "NativeRestForwarder", "NativeRestIngress",
           "RestApp", "ServerLimits", "serve_http", "start_rest_listener"]


async def serve_http(app: RestApp, host: str, port: int, limits: ServerLimits,
                     reuse_port: bool = False, backlog: int = 1024,
                     ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    """Listen on host:port and answer every connection with `app`."""
    loop = asyncio.get_running_loop()
    cork = Cork(loop)  # the listener's connections send their answers together per iteration
    return await loop.create_server(lambda: HttpServerProtocol(app, limits, cork), host, port,
                                    backlog=backlog, reuse_address=True,
                                    reuse_port=reuse_port or None, ssl=ssl_context)


async def start_rest_listener(ingress: Ingress, limits: ServerLimits, host: str, port: int,
                              reuse_port: bool = False,
                              ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    """The TF Serving REST surface on the native engine (TLS when `ssl_context`). `limits` is
    shared by every connection: a reload may change its `max_body` in place."""
    return await serve_http(NativeRestIngress(ingress), host, port, limits, reuse_port,
                            ssl_context=ssl_context)
