"""Fuzzing fixtures: one replica for the package, a gateway per module and engine in front of it,
raw I/O.

Every gateway fixture is parametrized over the data-path engines (listen.engine: compat, the
aiohttp and grpc.aio listeners; native, gateway.transport.native_rest and
gateway.transport.native_grpc). The replica serves
half_plus_two (versions 1 and 2, labelled stable=1 and canary=2 in its model config) and embed;
the gateway owns the same labels, so a request means the same thing sent to either. Requests
are written as raw bytes on a fresh socket (http.client would refuse many of the paths and
headers worth trying) and the answer is read with http.client's parser.
"""

from __future__ import annotations

import http.client
import pathlib
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.conftest import gateway_factory, models_dir  # noqa: F401
from tests.integration.gwproc import EngineGateway, GatewayProc
from tests.support.models import write_model_config
from tests.support.procs import ReplicaProc, start_replica

LABELS = {"stable": 1, "canary": 2}


@pytest.fixture(scope="package")
def replica(models_dir: pathlib.Path,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProc]:
    config = write_model_config(tmp_path_factory.mktemp("fuzz") / "models.config", models_dir)
    proc = start_replica(config, name="fuzz",
                         extra_args=["--allow_version_labels_for_unavailable_models"])
    try:
        proc.wait_available("embed")
        yield proc
    finally:
        proc.stop()


def gateway_config(replica: ReplicaProc) -> dict[str, Any]:
    return {
        "replicas": [{"name": "r0", "rest": f"127.0.0.1:{replica.rest_port}",
                      "grpc": f"127.0.0.1:{replica.grpc_port}"}],
        "models": {"half_plus_two": {"labels": dict(LABELS)}},
        "health": {"interval_s": 1.0, "timeout_s": 1.0, "metrics_interval_s": 5.0},
    }


ENGINES = ["compat", "native"]


def start_gateway(engine: str, cfg: dict[str, Any], workdir: pathlib.Path) -> GatewayProc:
    return EngineGateway(cfg, workdir, engine, name="gateway")


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def gateway(replica: ReplicaProc, engine: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    g = start_gateway(engine, gateway_config(replica), tmp_path_factory.mktemp(f"fuzz-gw-{engine}"))
    yield g
    g.stop()


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS, in KiB)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(port: int, method: str, target: bytes, headers: Sequence[tuple[str, str]],
                body: bytes, *, timeout: float = 20.0,
                tls: ssl.SSLContext | None = None) -> RawAnswer:
    """One HTTP/1.1 request written byte for byte on a new connection, its answer parsed.

    Host, Content-Length and Connection: close are set here; `headers` add to them."""
    head = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1",
            f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    head += [f"{k}: {v}".encode("latin-1") for k, v in headers]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain:
        sock = tls.wrap_socket(plain, server_hostname="localhost") if tls else plain
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        data = resp.read()
        return RawAnswer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
