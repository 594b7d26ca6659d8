"""TLS and mTLS between the gateway and a replica's gRPC port (TF Serving's --ssl_config_file).

A throwaway CA made with the ``openssl`` CLI signs a server certificate (SAN replica.test and
127.0.0.1) and a client certificate. One replica serves half_plus_two v1/v2 with an SSLConfig
that requires client certificates; its REST port stays plain HTTP, as in TF Serving. A gateway
holding the client certificate predicts through it over gRPC; one holding only the CA is refused
at the handshake (UNAVAILABLE) yet keeps serving REST. A second replica runs one-way TLS
(client_verify false). With ``upstream_tls.rest: true`` the gateway reaches the REST port (model
status probes, predictions, the load scrape) through an nginx sidecar that terminates mTLS. Bad
SSLConfig files and bad ``upstream_tls`` configs are refused before anything starts.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from gateway.config import ConfigError, parse_config
from replica.flags import read_ssl_config
from tests.integration.gwproc import GatewayProc, http
from tests.support.procs import (
    REPO_ROOT,
    ManagedProcess,
    ProcessFailed,
    ReplicaProc,
    free_port,
    start_replica,
)

pytestmark = pytest.mark.integration

SERVER_NAME = "replica.test"
X = [1.0, 2.0, 5.0]
V1 = [2.5, 3.0, 4.5]  # 0.5x + 2
V2 = [3.5, 4.0, 5.5]  # 0.5x + 3


@dataclass(frozen=True)
class Pki:
    ca: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path


def _openssl(*args: str | pathlib.Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _issue(d: pathlib.Path, name: str, subject: str, extensions: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A P-256 key and a one-day certificate for it signed by the CA in ``d``."""
    key, csr, cert, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", subject)
    _openssl("x509", "-req", "-in", csr, "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", cert)
    return cert, key


def make_pki(d: pathlib.Path) -> Pki:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "1", "-subj", "/CN=infergate test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    server_cert, server_key = _issue(
        d, "server", f"/CN={SERVER_NAME}",
        f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    client_cert, client_key = _issue(d, "client", "/CN=infergate gateway", "extendedKeyUsage=clientAuth\n")
    return Pki(d / "ca.pem", server_cert, server_key, client_cert, client_key)


def _quoted(text: str) -> str:
    """A text-proto string literal (PEM holds no quotes or backslashes; newlines become \\n)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write_ssl_config(path: pathlib.Path, pki: Pki, *, client_verify: bool = True,
                     pems: Mapping[str, str | None] | None = None) -> pathlib.Path:
    """An SSLConfig text proto with the PEMs inline; ``pems`` replaces (or, with None, drops)
    server_key, server_cert or custom_ca."""
    fields = {"server_key": pki.server_key.read_text(), "server_cert": pki.server_cert.read_text(),
              "custom_ca": pki.ca.read_text(), **(pems or {})}
    lines = [f"{name}: {_quoted(text)}" for name, text in fields.items() if text is not None]
    lines.append(f"client_verify: {'true' if client_verify else 'false'}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def replica(pki: Pki, models_dir: pathlib.Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProc]:
    d = tmp_path_factory.mktemp("tls-replica")
    ssl_config = write_ssl_config(d / "ssl.config", pki)
    models = d / "models.config"
    models.write_text(
        f'model_config_list {{ config {{ name: "half_plus_two" base_path: "{models_dir / "half_plus_two"}" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }\n')
    # The gpu_util knob gives the sidecar test a load reading to scrape.
    proc = start_replica(models, name="tls",
                         extra_args=[f"--ssl_config_file={ssl_config}", "--gpu_util=0.42"])
    try:
        proc.wait_available("half_plus_two", 2)
        yield proc
    finally:
        proc.stop()


def _gateway_cfg(replica: ReplicaProc, tls: dict[str, Any], *, rest: bool = True) -> dict[str, Any]:
    """One replica; without ``rest`` the gateway knows only its gRPC port and probes it there."""
    entry = {"name": "r0", "grpc": replica.grpc_addr}
    if rest:
        entry["rest"] = f"127.0.0.1:{replica.rest_port}"
    return {"replicas": [entry], "models": {"half_plus_two": {}}, "upstream_tls": tls}


def _request(version: int | None = 2) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    if version is not None:
        request.model_spec.version.value = version
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(X))])
    request.inputs["x"].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=X))
    return request


def _predict(channel: grpc.Channel, version: int | None = 2) -> predict_pb2.PredictResponse:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response: predict_pb2.PredictResponse = stub.Predict(_request(version), timeout=10)
    return response


def _rpc_code(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        _predict(channel)
    code: grpc.StatusCode = err.value.code()
    return code


def _tls_channel(replica: ReplicaProc, pki: Pki, *, client_cert: bool) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None)
    return grpc.secure_channel(replica.grpc_addr, creds,
                               options=[("grpc.ssl_target_name_override", SERVER_NAME)])


def test_replica_grpc_speaks_only_mtls(replica: ReplicaProc, pki: Pki) -> None:
    with _tls_channel(replica, pki, client_cert=True) as ch:
        response = _predict(ch)
    assert list(response.outputs["y"].float_val) == V2
    assert response.model_spec.version.value == 2
    with grpc.insecure_channel(replica.grpc_addr) as ch:
        assert _rpc_code(ch) == grpc.StatusCode.UNAVAILABLE
    with _tls_channel(replica, pki, client_cert=False) as ch:
        assert _rpc_code(ch) == grpc.StatusCode.UNAVAILABLE
    # REST stays plain HTTP, as in TF Serving.
    status, _, body = http("POST", f"{replica.rest_url}/v1/models/half_plus_two/versions/1:predict",
                           {"instances": X})
    assert status == 200 and b"2.5" in body


@pytest.mark.parametrize("rest", [True, False], ids=["rest-probes", "grpc-only"])
def test_gateway_predicts_over_mtls(replica: ReplicaProc, pki: Pki, gateway_factory: Any,
                                    rest: bool) -> None:
    gw: GatewayProc = gateway_factory(_gateway_cfg(replica, {
        "ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key),
        "server_name": SERVER_NAME}, rest=rest), name="gw-mtls")
    with grpc.insecure_channel(gw.grpc_addr) as ch:
        response = _predict(ch, version=2)
        assert list(response.outputs["y"].float_val) == V2
        assert response.model_spec.version.value == 2
        assert list(_predict(ch, version=1).outputs["y"].float_val) == V1


def test_gateway_without_client_cert_is_refused_but_serves_rest(
        replica: ReplicaProc, pki: Pki, gateway_factory: Any) -> None:
    gw: GatewayProc = gateway_factory(_gateway_cfg(replica, {"ca": str(pki.ca), "server_name": SERVER_NAME}),
                                      name="gw-ca-only")
    with grpc.insecure_channel(gw.grpc_addr) as ch:
        assert _rpc_code(ch) == grpc.StatusCode.UNAVAILABLE
    assert gw.proc.poll() is None
    status, _, _ = http("GET", gw.admin_url + "/readyz")
    assert status == 200
    status, _, body = http("POST", f"{gw.rest_url}/v1/models/half_plus_two/versions/2:predict",
                           {"instances": X})
    assert status == 200, body
    assert body.replace(b" ", b"").replace(b"\n", b"") == b'{"predictions":[3.5,4.0,5.5]}'


def start_tls_sidecar(d: pathlib.Path, pki: Pki, upstream_port: int) -> tuple[ManagedProcess, int]:
    """nginx terminating mTLS in front of a replica's plain REST port (TF Serving's REST API has
    no TLS of its own; this is the deployment `upstream_tls.rest: true` is for)."""
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    port = free_port()
    temp = " ".join(f"{kind}_temp_path {d / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                  "uwsgi", "scgi"))
    conf = d / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {d / "nginx.pid"};
error_log {d / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  {temp}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {pki.server_cert};
    ssl_certificate_key {pki.server_key};
    ssl_client_certificate {pki.ca};
    ssl_verify_client on;
    location / {{
      proxy_pass http://127.0.0.1:{upstream_port};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    proc = ManagedProcess(["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log"),
                           "-g", "daemon off;"], name="nginx-tls")
    try:
        proc.wait_for_port(port, timeout=20)
    except ProcessFailed:
        proc.stop()
        raise
    return proc, port


def _gauge(text: str, name: str, replica: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'replica="{replica}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_rest_over_mtls_through_a_sidecar(replica: ReplicaProc, pki: Pki, tmp_path: pathlib.Path,
                                          gateway_factory: Any) -> None:
    sidecar, port = start_tls_sidecar(tmp_path, pki, replica.rest_port)
    try:
        gw: GatewayProc = gateway_factory({
            "replicas": [{"name": "r0", "rest": f"127.0.0.1:{port}", "grpc": replica.grpc_addr,
                          "metrics": f"https://127.0.0.1:{port}/monitoring/prometheus/metrics"}],
            "models": {"half_plus_two": {}},
            "upstream_tls": {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key),
                             "server_name": SERVER_NAME, "rest": True},
        }, name="gw-rest-tls")
        # Version resolution needs the health probe (REST over mTLS) to have seen v2.
        status, headers, body = http("POST", f"{gw.rest_url}/v1/models/half_plus_two:predict",
                                     {"instances": X})
        assert status == 200, body
        assert headers["x-infergate-version"] == "2"
        assert body.replace(b" ", b"").replace(b"\n", b"") == b'{"predictions":[3.5,4.0,5.5]}'
        with grpc.insecure_channel(gw.grpc_addr) as ch:
            assert list(_predict(ch, version=1).outputs["y"].float_val) == V1
        # The load scrape goes through the same sidecar, with the same client certificate.
        deadline = time.monotonic() + 10
        while _gauge(gw.metrics(), "infergate_replica_gpu_utilization", "r0") != 0.42:
            assert time.monotonic() < deadline, gw.metrics()
            time.sleep(0.1)
    finally:
        sidecar.stop()


def test_one_way_tls_needs_no_client_cert(pki: Pki, models_dir: pathlib.Path, tmp_path: pathlib.Path,
                                          gateway_factory: Any) -> None:
    ssl_config = write_ssl_config(tmp_path / "ssl.config", pki, client_verify=False, pems={"custom_ca": None})
    one_way = start_replica(models_dir / "half_plus_two", name="tls-one-way",
                            extra_args=[f"--ssl_config_file={ssl_config}"])
    try:
        with _tls_channel(one_way, pki, client_cert=False) as ch:
            assert list(_predict(ch).outputs["y"].float_val) == V2
        with grpc.insecure_channel(one_way.grpc_addr) as ch:
            assert _rpc_code(ch) == grpc.StatusCode.UNAVAILABLE
        gw: GatewayProc = gateway_factory(
            _gateway_cfg(one_way, {"ca": str(pki.ca), "server_name": SERVER_NAME}), name="gw-one-way")
        with grpc.insecure_channel(gw.grpc_addr) as ch:
            assert list(_predict(ch).outputs["y"].float_val) == V2
    finally:
        one_way.stop()


def test_upstream_tls_config_is_validated(pki: Pki, tmp_path: pathlib.Path) -> None:
    base = {"replicas": [{"name": "a", "grpc": "127.0.0.1:1"}], "models": {"m": {}}}
    for tls, expect in [
        ({"cert": str(pki.client_cert)}, "cert and key go together"),
        ({"key": str(pki.client_key)}, "cert and key go together"),
        ({"ca": str(tmp_path / "nope.pem")}, "ca: no such file"),
        ({"cert": str(tmp_path / "nope.pem"), "key": str(pki.client_key)}, "cert: no such file"),
        ({"ca": str(pki.ca), "colour": "red"}, "upstream_tls.colour"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config({**base, "upstream_tls": tls}, "gw.yaml")
        assert "upstream_tls" in str(err.value) and expect in str(err.value), str(err.value)
    ok = parse_config({**base, "upstream_tls": {"ca": str(pki.ca), "cert": str(pki.client_cert),
                                                "key": str(pki.client_key)}}, "gw.yaml")
    assert ok.upstream_tls is not None and ok.upstream_tls.rest is False


def test_ssl_config_file_is_parsed_as_tf_serving_text_proto(pki: Pki, tmp_path: pathlib.Path) -> None:
    config = read_ssl_config(str(write_ssl_config(tmp_path / "ok.config", pki, client_verify=False)))
    assert config.server_cert == pki.server_cert.read_text()
    assert config.server_key == pki.server_key.read_text()
    assert config.custom_ca == pki.ca.read_text() and config.client_verify is False
    cases: list[tuple[dict[str, str | None], str]] = [
        ({"server_cert": None}, "needs both server_key and server_cert"),
        ({"custom_ca": None}, "client_verify needs custom_ca"),
        ({"server_key": pki.client_key.read_text()}, "server_key/server_cert do not load"),
        ({"server_cert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
         "server_key/server_cert do not load"),
        ({"custom_ca": "not a certificate"}, "custom_ca does not load"),
    ]
    for pems, expect in cases:
        with pytest.raises(ValueError, match=expect):
            read_ssl_config(str(write_ssl_config(tmp_path / "bad.config", pki, pems=pems)))


def test_replica_refuses_a_bad_ssl_config_before_loading(pki: Pki, models_dir: pathlib.Path,
                                                         tmp_path: pathlib.Path) -> None:
    bad = write_ssl_config(tmp_path / "half.config", pki, pems={"server_cert": None})
    garbled = tmp_path / "garbled.config"
    garbled.write_text("server_key: unquoted\n")
    for path, expect in [(bad, "needs both server_key and server_cert"),
                         (garbled, "Cannot read a config file")]:
        done = subprocess.run(
            [sys.executable, "-m", "replica", f"--port={free_port()}", "--rest_api_port=0",
             "--host=127.0.0.1", "--model_name=half_plus_two",
             f"--model_base_path={models_dir / 'half_plus_two'}", f"--ssl_config_file={path}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert expect in done.stderr
