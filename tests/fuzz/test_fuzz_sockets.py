"""Hostile connections do not stall other clients: garbage on TLS listeners, slow clients.

While a crowd of bad connections is held open (TLS records that lie about their length,
half a ClientHello, random bytes, plaintext HTTP on a TLS port, requests that stop halfway
through their headers or body, half an HTTP/2 preface on the gRPC port), ordinary clients on
fresh connections keep getting right answers over REST and gRPC, and the gateway stays up. A
client call has a 10 s timeout: a stalled listener fails it (no assertion on speed).
"""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
import time
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import gateway_config, raw_request, start_gateway
from tests.integration.gwproc import GatewayProc
from tests.support.certs import self_signed
from tests.support.procs import ReplicaProc

pytestmark = pytest.mark.integration

PATH = b"/v1/models/half_plus_two:predict"
BODY = b'{"instances": [1.0, 2.0, 5.0]}'
EXPECTED = {"predictions": [3.5, 4.0, 5.5]}
PREDICT = "/tensorflow.serving.PredictionService/Predict"
# PredictRequest{model_spec{name: "half_plus_two"}, inputs{"x": float [1] {1.0}}}, by hand.
GRPC_PREDICT = (b"\n\x0f\n\rhalf_plus_two\x12\x13\n\x01x\x12\x0e\x08\x01\x12\x04\x12\x02\x08\x01"
                b"*\x04\x00\x00\x80?")
CALL_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return self_signed(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_gateway(replica: ReplicaProc, certs: pathlib.Path, engine: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    cfg = dict(gateway_config(replica))
    cfg["tls"] = {"cert": str(certs / "cert.pem"), "key": str(certs / "key.pem")}
    g = start_gateway(engine, cfg, tmp_path_factory.mktemp(f"fuzz-tls-gw-{engine}"))
    yield g
    g.stop()


def client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello record), taken from memory BIOs."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


HELLO = client_hello()
FIXED_GARBAGE = [
    b"",  # connect and say nothing
    b"\x16\x03\x01\xff\xff" + b"\x01" * 16,  # a handshake record claiming 64 KiB, then silence
    HELLO[: len(HELLO) // 2],  # half a ClientHello
    HELLO[:5],  # a record header only
    b"\x80\x2e\x01\x00\x02\x00\x15",  # an SSLv2-style hello
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plaintext HTTP on a TLS port
    b"\x15\x03\x03\x00\x02\x02\x28",  # a fatal alert before any hello
    HELLO + b"\x00" * 32,  # a full hello followed by junk
]


def hold(port: int, payloads: list[bytes]) -> list[socket.socket]:
    """One connection per payload: send it and keep the connection open, reading nothing."""
    held = []
    for payload in payloads:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if payload:
            try:
                s.sendall(payload)
            except OSError:
                pass  # the gateway may already have closed it: that is fine too
        held.append(s)
    return held


def release(held: list[socket.socket]) -> None:
    for s in held:
        s.close()


def rest_ok(port: int, tls: ssl.SSLContext | None = None) -> None:
    answer = raw_request(port, "POST", PATH, [], BODY, timeout=CALL_TIMEOUT, tls=tls)
    assert answer.status == 200 and json.loads(answer.body) == EXPECTED, answer


def grpc_ok(channel: grpc.Channel) -> None:
    reply = channel.unary_unary(PREDICT)(GRPC_PREDICT, timeout=CALL_TIMEOUT)
    assert b"y" in reply  # PredictResponse.outputs["y"]


def test_tls_garbage_does_not_stall_other_clients(tls_gateway: GatewayProc,
                                                   certs: pathlib.Path) -> None:
    ctx = ssl.create_default_context(cafile=str(certs / "cert.pem"))
    creds = grpc.ssl_channel_credentials((certs / "cert.pem").read_bytes())
    with grpc.secure_channel(f"localhost:{tls_gateway.grpc_port}", creds) as channel:
        rest_ok(tls_gateway.rest_port, ctx)
        grpc_ok(channel)
        crowd = (hold(tls_gateway.rest_port, FIXED_GARBAGE * 5)
                 + hold(tls_gateway.grpc_port, FIXED_GARBAGE * 5))
        try:
            for _ in range(10):
                rest_ok(tls_gateway.rest_port, ctx)
                grpc_ok(channel)

            @settings(max_examples=60, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(st.lists(st.one_of(st.binary(min_size=1, max_size=300),
                                      st.binary(max_size=40).map(lambda b: HELLO[:20] + b),
                                      st.binary(max_size=40).map(lambda b: b"\x16\x03\x03" + b)),
                            min_size=1, max_size=4), st.booleans())
            def case(payloads: list[bytes], on_grpc: bool) -> None:
                port = tls_gateway.grpc_port if on_grpc else tls_gateway.rest_port
                more = hold(port, payloads)
                try:
                    if on_grpc:
                        grpc_ok(channel)
                    else:
                        rest_ok(tls_gateway.rest_port, ctx)
                finally:
                    release(more)

            case()
        finally:
            release(crowd)
        rest_ok(tls_gateway.rest_port, ctx)
        grpc_ok(channel)
    assert tls_gateway.proc.poll() is None, tls_gateway.log()[-3000:]


SLOW_REST = [
    b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n",  # headers never end
    b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    b"GET /v1/models/half_plus_two HTTP/1.1\r\nHo",
    b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{",
    b"P",
    b"",
]
SLOW_GRPC = [
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the preface, and no SETTINGS
    b"PRI * HTTP/2.0\r\n",  # half the preface
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",  # SETTINGS, no stream
    b"\x00\x00\xff\x01\x04\x00\x00\x00\x01",  # a HEADERS frame header promising 255 bytes
    b"",
]


def test_slow_clients_do_not_stall_other_clients(gateway: GatewayProc) -> None:
    """Slow REST clients (half a request, then silence) and stalled HTTP/2 connections on the
    gRPC port, 60 of each, held while ordinary calls go through on both listeners; then one
    slow client that trickles a whole request a few bytes at a time is answered."""
    with grpc.insecure_channel(gateway.grpc_addr) as channel:
        crowd = (hold(gateway.rest_port, SLOW_REST * 10) + hold(gateway.grpc_port, SLOW_GRPC * 12))
        try:
            for _ in range(20):
                rest_ok(gateway.rest_port)
                grpc_ok(channel)
            request = (b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)
            with socket.create_connection(("127.0.0.1", gateway.rest_port), timeout=10) as slow:
                for i in range(0, len(request), 7):
                    slow.sendall(request[i:i + 7])
                    rest_ok(gateway.rest_port)  # others are served between the slow bytes
                    time.sleep(0.01)
                answer = b""
                while chunk := slow.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == EXPECTED
        finally:
            release(crowd)
        rest_ok(gateway.rest_port)
        grpc_ok(channel)
    assert gateway.proc.poll() is None, gateway.log()[-3000:]
