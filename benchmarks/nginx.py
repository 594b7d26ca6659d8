"""nginx configurations for the benchmark: the fixed-answer backend and the baseline proxies.

The backend answers as a TF Serving replica would for the calls the benchmark makes:
- REST: model status (one AVAILABLE version) for GET /v1/models/M, a fixed predict answer
  for everything else;
- gRPC (h2c, prior knowledge): a fixed PredictResponse with grpc-status 0 in the trailers for
  every POST. nginx's static module refuses POST with 405, so the 405 is turned into an internal
  redirect to the answer file (error_page changes the method to GET) and the trailers are added
  with add_trailer.

The baselines are nginx doing the gateway's job without routing: proxy_pass (HTTP/1.1 keep-alive
upstream) and grpc_pass, one worker each, so they can be pinned to one core like the gateway.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.protos import REST_PREDICT_ANSWER, REST_STATUS_ANSWER, grpc_frame, predict_response

_COMMON = """\
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams 1024;
  client_max_body_size 64m;
{servers}
}}
"""


def _nginx_string(b: bytes) -> str:
    return b.decode().replace("\\", "\\\\").replace("'", "\\'")


def backend_conf(workdir: Path, rest_port: int, grpc_port: int, workers: int = 1) -> Path:
    """Write the fixed-answer backend's config (and its gRPC answer file); return the path."""
    d = workdir / "nginx-backend"
    d.mkdir(parents=True, exist_ok=True)
    (d / "www").mkdir(exist_ok=True)
    (d / "www" / "predict.grpc").write_bytes(grpc_frame(predict_response()))
    servers = f"""
  server {{
    listen 127.0.0.1:{rest_port} backlog=4096;
    default_type application/json;
    location ~* "^/v1/models/[^/:]+/?$" {{ return 200 '{_nginx_string(REST_STATUS_ANSWER)}'; }}
    location / {{ return 200 '{_nginx_string(REST_PREDICT_ANSWER)}'; }}
  }}
  server {{
    listen 127.0.0.1:{grpc_port} http2 backlog=4096;
    root {d}/www;
    types {{ }}
    default_type application/grpc;
    location / {{ error_page 405 =200 /predict.grpc; return 405; }}
    location = /predict.grpc {{
      internal;
      add_trailer grpc-status 0 always;
      add_trailer grpc-message "" always;
    }}
  }}"""
    path = d / "nginx.conf"
    path.write_text(_COMMON.format(workers=workers, dir=d, servers=servers))
    return path


def proxy_conf(workdir: Path, rest_port: int, grpc_port: int, backend_rest: int,
               backend_grpc: int) -> Path:
    """The baseline: nginx proxy_pass and grpc_pass to the backend, one worker."""
    d = workdir / "nginx-proxy"
    d.mkdir(parents=True, exist_ok=True)
    servers = f"""
  upstream rest_backend {{ server 127.0.0.1:{backend_rest}; keepalive 1024; }}
  upstream grpc_backend {{ server 127.0.0.1:{backend_grpc}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{rest_port} backlog=4096;
    location / {{
      proxy_pass http://rest_backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{grpc_port} http2 backlog=4096;
    location / {{ grpc_pass grpc://grpc_backend; }}
  }}"""
    path = d / "nginx.conf"
    path.write_text(_COMMON.format(workers=1, dir=d, servers=servers))
    return path
