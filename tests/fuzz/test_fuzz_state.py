"""State a client can grow: per-name tables in the gateway must stay bounded, whatever names
clients send (a slow memory leak is a denial of service that no RSS check over a few thousand
fuzz cases can see). Checked in process, on the components that keep such tables; no I/O.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc

from gateway.config import parse_config
from gateway.routing.runtime import Runtime
from gateway.transport.compat.grpc_ingress import GrpcIngress
from gateway.transport.grpc_methods import METHODS

NAMES = 3000


def test_routers_of_unknown_model_names_are_not_kept() -> None:
    """Runtime.router() for names no replica serves answers a router but does not keep it."""
    rt = Runtime(parse_config({"models": {"half_plus_two": {}}}))
    for i in range(NAMES):
        assert rt.router(f"no-such-model-{i}") is not None
    assert set(rt.routers) == {"half_plus_two"}


def test_grpc_handlers_for_unknown_method_paths_are_not_kept() -> None:
    ingress = GrpcIngress(ingress=None)  # type: ignore[arg-type]  # service() never uses it
    for path in METHODS:
        assert ingress.service(SimpleNamespace(method=path)) is not None  # type: ignore[arg-type]
    for i in range(NAMES):
        details: Any = SimpleNamespace(method=f"/tensorflow.serving.PredictionService/M{i}")
        handler = ingress.service(details)
        assert isinstance(handler, grpc.RpcMethodHandler)
    assert len(ingress._handlers) <= len(METHODS)
