"""The balancers the fleet benchmark compares, each in front of the same four replicas:
infergate with four policies (one gateway process each), nginx (round robin and least_conn, one
process with two listeners, one worker) and HAProxy (leastconn, one thread).

What must always hold: every balancer forwards to exactly the replicas it is given, listens
only on 127.0.0.1, keeps upstream connections alive (no balancer pays a connect per call), and
is started through `procs.Procs`, which stops each process by its pid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import procs

MODEL = "half_plus_two"
HAPROXY = "/usr/sbin/haproxy"


@dataclass(frozen=True, slots=True)
class Balancer:
    name: str
    family: str  # "infergate" | "nginx" | "haproxy"
    port: int  # REST port the load goes to
    process: str  # name in Procs


# name -> (balance policy, hedge settings or None)
INFERGATE_POLICIES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "infergate round_robin": ("round_robin", None),
    "infergate least_request": ("least_request", None),
    "infergate least_loaded": ("least_loaded", None),
    "infergate least_loaded+hedge": ("least_loaded", {"delay_ms": None, "fallback_ms": 50,
                                                      "budget_ratio": 0.05}),
}
NGINX_POLICIES = {"nginx round_robin": "", "nginx least_conn": "least_conn;"}
HAPROXY_NAME = "haproxy leastconn"
ALL_NAMES = [*INFERGATE_POLICIES, *NGINX_POLICIES, HAPROXY_NAME]


def infergate_policies(extra: list[str]) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """The infergate rows: the four above plus one per extra registered balancer name."""
    return {**INFERGATE_POLICIES, **{f"infergate {name}": (name, None) for name in extra}}


def infergate_config(workdir: Path, name: str, replica_ports: list[int], policy: str,
                     hedge: dict[str, Any] | None) -> tuple[Path, int, int]:
    """A gateway config for one policy; returns (path, rest port, admin port)."""
    rest, admin = procs.free_port(), procs.free_port()
    model: dict[str, Any] = {"balance": policy}
    if hedge is not None:
        model["hedge"] = hedge
    cfg: dict[str, Any] = {
        "listen": {"rest": f"127.0.0.1:{rest}", "grpc": "", "admin": f"127.0.0.1:{admin}",
                   "engine": "native"},
        "replicas": [{"name": f"r{i}", "rest": f"127.0.0.1:{p}",
                      "metrics": f"http://127.0.0.1:{p}/metrics"}
                     for i, p in enumerate(replica_ports)],
        "models": {MODEL: {**model}},
        "default_balance": policy,
        # Probes at 2 s; load scraped every 2 s (the setting), counted stale after 10 s.
        "health": {"interval_s": 2.0, "timeout_s": 1.0, "metrics_interval_s": 2.0},
    }
    path = workdir / f"{name.replace(' ', '-').replace('+', '-')}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, rest, admin


def nginx_config(workdir: Path, replica_ports: list[int]) -> tuple[Path, dict[str, int]]:
    d = workdir / "nginx-fleet"
    d.mkdir(parents=True, exist_ok=True)
    ports = {name: procs.free_port() for name in NGINX_POLICIES}
    servers = []
    for k, (name, method) in enumerate(NGINX_POLICIES.items()):
        peers = "".join(f"server 127.0.0.1:{p};" for p in replica_ports)
        servers.append(f"""
  upstream fleet{k} {{ {method} {peers} keepalive 1024; }}
  server {{
    listen 127.0.0.1:{ports[name]} backlog=4096;
    location / {{
      proxy_pass http://fleet{k};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}""")
    conf = f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log error;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
{"".join(servers)}
}}
"""
    path = d / "nginx.conf"
    path.write_text(conf)
    return path, ports


def haproxy_config(workdir: Path, replica_ports: list[int]) -> tuple[Path, int]:
    port = procs.free_port()
    servers = "\n".join(f"  server r{i} 127.0.0.1:{p}" for i, p in enumerate(replica_ports))
    conf = f"""global
  nbthread 1
  maxconn 8000

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always

frontend fleet
  bind 127.0.0.1:{port}
  default_backend replicas

backend replicas
  balance leastconn
{servers}
"""
    path = workdir / "haproxy.cfg"
    path.write_text(conf)
    return path, port


def start_all(p: procs.Procs, workdir: Path, replica_ports: list[int], cpu: str,
              names: list[str], infergate: dict[str, tuple[str, dict[str, Any] | None]]
              ) -> list[Balancer]:
    """Start the balancers named (infergate ones from `infergate`, see `infergate_policies`) on
    `cpu`; wait until each listens."""
    out: list[Balancer] = []
    for name, (policy, hedge) in infergate.items():
        if name not in names:
            continue
        path, rest, admin = infergate_config(workdir, name, replica_ports, policy, hedge)
        proc_name = name.replace(" ", "-").replace("+", "-")
        procs.start_gateway(p, proc_name, path, cpu, admin)
        out.append(Balancer(name, "infergate", rest, proc_name))
    if any(n in names for n in NGINX_POLICIES):
        conf, ports = nginx_config(workdir, replica_ports)
        procs.start_nginx(p, "nginx-fleet", conf, cpu)
        for name, port in ports.items():
            procs.wait_port(port)
            if name in names:
                out.append(Balancer(name, "nginx", port, "nginx-fleet"))
    if HAPROXY_NAME in names:
        conf, port = haproxy_config(workdir, replica_ports)
        p.start("haproxy", [HAPROXY, "-f", str(conf), "-db"], cpu)
        procs.wait_port(port)
        out.append(Balancer(HAPROXY_NAME, "haproxy", port, "haproxy"))
    time.sleep(0.1)
    return out

