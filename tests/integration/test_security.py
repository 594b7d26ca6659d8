"""API keys per model, the admin bearer token and TLS on the listeners, against real processes."""

from __future__ import annotations

import hashlib
import json
import pathlib
import ssl
import urllib.request
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from tests.integration.gwproc import http
from tests.support.certs import self_signed

KEY = "k-0123456789abcdef"
OTHER = "k-fedcba9876543210"
BODY = {"instances": [1.0]}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return self_signed(tmp_path_factory.mktemp("certs"))


def test_api_keys_per_model(fleet: Fleet, gateway_factory: Any) -> None:
    digest = "sha256:" + hashlib.sha256(OTHER.encode()).hexdigest()
    g = gateway_factory({"replicas": fleet.replica_cfg(),
                         "models": {"half_plus_two": {"api_keys": [KEY, digest]}}})
    url = g.rest_url + "/v1/models/half_plus_two:predict"
    status, _, out = http("POST", url, BODY)
    assert status == 401 and "API key" in json.loads(out)["error"]
    assert http("POST", url, BODY, {"x-api-key": "k-wrong-wrong-wrong"})[0] == 401
    assert http("POST", url, BODY, {"x-api-key": KEY})[0] == 200
    assert http("POST", url, BODY, {"Authorization": f"Bearer {OTHER}"})[0] == 200
    assert KEY not in g.log() and OTHER not in g.log()


def test_api_key_over_grpc(fleet: Fleet, gateway_factory: Any) -> None:
    grpc = pytest.importorskip("grpc")
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    g = gateway_factory({"replicas": fleet.replica_cfg(),
                         "models": {"half_plus_two": {"api_keys": [KEY]}}})
    with grpc.insecure_channel(g.grpc_addr) as ch:
        stub = model_service_pb2_grpc.ModelServiceStub(ch)
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = "half_plus_two"
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelStatus(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        resp = stub.GetModelStatus(req, timeout=10, metadata=[("x-api-key", KEY)])
        assert resp.model_version_status[0].state == 30


def test_admin_token(fleet: Fleet, gateway_factory: Any) -> None:
    token = "admin-token-0123456789"
    g = gateway_factory({"replicas": fleet.replica_cfg(), "admin_token": token})
    assert http("GET", g.admin_url + "/healthz")[0] == 200
    assert http("GET", g.admin_url + "/metrics")[0] == 200
    assert http("GET", g.admin_url + "/api/replicas")[0] == 401
    assert http("POST", g.admin_url + "/api/reload")[0] == 401
    ok = http("GET", g.admin_url + "/api/replicas", headers={"Authorization": f"Bearer {token}"})
    assert ok[0] == 200 and json.loads(ok[2])["replicas"]


def test_admin_beyond_loopback_needs_token(fleet: Fleet, tmp_path: pathlib.Path) -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="beyond loopback needs admin_token"):
        parse_config({"listen": {"admin": "0.0.0.0:9901"}, "replicas": fleet.replica_cfg()}, "gw.yaml")


def test_tls_listeners(fleet: Fleet, gateway_factory: Any, certs: pathlib.Path) -> None:
    tls = {"cert": str(certs / "cert.pem"), "key": str(certs / "key.pem")}
    g = gateway_factory({"replicas": fleet.replica_cfg(), "tls": tls})
    ctx = ssl.create_default_context(cafile=str(certs / "cert.pem"))
    req = urllib.request.Request(f"https://127.0.0.1:{g.rest_port}/v1/models/half_plus_two:predict",
                                 data=json.dumps(BODY).encode(), method="POST")
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        assert json.loads(resp.read())["predictions"] == [3.5]
    with pytest.raises(OSError):  # plain HTTP to a TLS port fails instead of leaking data
        http("POST", g.rest_url + "/v1/models/half_plus_two:predict", BODY, timeout=5)
    grpc = pytest.importorskip("grpc")
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    creds = grpc.ssl_channel_credentials((certs / "cert.pem").read_bytes())
    with grpc.secure_channel(g.grpc_addr, creds) as ch:
        req2 = get_model_status_pb2.GetModelStatusRequest()
        req2.model_spec.name = "half_plus_two"
        resp = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(req2, timeout=10)
        assert len(resp.model_version_status) == 2
