"""The native REST engine: an HTTP/1.1 server on asyncio protocols and httptools, and an own
keep-alive upstream pool. `start_rest_listener` is what gateway.app calls for `engine: native`.

What must always hold: this package sees the rest of the gateway only through `Call`, `Answer`,
the pipeline and the error table; nothing outside it depends on its classes.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from gateway.fastrest.cork import Cork
from gateway.fastrest.forwarder import NativeRestForwarder
from gateway.fastrest.ingress import NativeRestIngress
from gateway.fastrest.server import HttpRequest, HttpServerProtocol, RestApp, ServerLimits

if TYPE_CHECKING:
    from gateway.app import Gateway

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


async def start_rest_listener(gw: Gateway, host: str, port: int, reuse_port: bool = False,
                              ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    """The TF Serving REST surface of `gw` on the native engine (TLS when `ssl_context`)."""
    limits = ServerLimits(max_body=gw.runtime.cfg.limits.max_body_bytes)
    return await serve_http(NativeRestIngress(gw), host, port, limits, reuse_port,
                            ssl_context=ssl_context)
