"""One fleet, many gateways: replicas found through DNS as they come and go, scale decisions
that every gateway on one Redis agrees on (a killed gateway included), and `--workers 2` seen
from the outside as one gateway.

Real processes only: replicas bound to distinct loopback addresses (127.0.0.2, 127.0.0.3) on the
same ports, as pods behind a headless Service; a DNS server (tests.support.dns) on 127.0.0.1;
redis-server; gateways as subprocesses.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import model_config
from tests.integration.gwproc import ROOT, GatewayProc, free_port
from tests.support.dns import DnsServer, start_dns
from tests.support.procs import ReplicaProc, http_get, log_dir, start_redis

pytestmark = pytest.mark.integration

MODEL = "half_plus_two"
ADDRS = ["127.0.0.2", "127.0.0.3"]
NAME = "tf.fleet.test."


class Replicas:
    """Two replicas on the same (REST, gRPC) ports at two loopback addresses."""

    def __init__(self, config: pathlib.Path) -> None:
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.procs: dict[str, ReplicaProc] = {}
        for addr in ADDRS:
            argv = [sys.executable, "-m", "replica", f"--port={self.grpc_port}",
                    f"--rest_api_port={self.rest_port}", f"--host={addr}",
                    f"--model_config_file={config}"]
            self.procs[addr] = ReplicaProc(argv, name=f"dns-{addr}", rest_port=self.rest_port,
                                           grpc_port=self.grpc_port,
                                           env={"TF_CPP_MIN_LOG_LEVEL": "2"})
        for addr, proc in self.procs.items():
            proc.wait_until(lambda a=addr: self.serving(a), timeout=90, what=f"serving at {addr}")

    def serving(self, addr: str) -> bool:
        try:
            status, body = http_get(f"http://{addr}:{self.rest_port}/v1/models/{MODEL}", 1.0)
        except OSError:
            return False
        return status == 200 and b"AVAILABLE" in body

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()


@pytest.fixture(scope="module")
def pair(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    r = Replicas(model_config(models_dir, tmp_path_factory.mktemp("dns") / "models.config"))
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = start_dns({"names": {NAME: {"ttl": 1, "A": [ADDRS[0]]}}})
    yield server
    server.stop()


class Traffic:
    """`threads` clients sending REST predicts until stopped; every failure is kept."""

    def __init__(self, port: int, threads: int = 8) -> None:
        self.port = port
        self.calls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            try:
                conn.request("POST", f"/v1/models/{MODEL}:predict", b'{"instances": [1.0]}',
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200
                what = f"{resp.status} {body[:100]!r}"
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                ok, what = False, repr(exc)
            with self._lock:
                self.calls += 1
                if not ok:
                    self.failures.append(what)
            time.sleep(0.005)
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def _replicas(g: GatewayProc) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    status, body = g.api("/api/replicas")
    assert status == 200
    return {r["name"]: r for r in body["replicas"]}, body["discovery"]


def _until(what: str, check: Any, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def test_dns_discovery_follows_records_under_load(pair: Replicas, dns_server: DnsServer,
                                                  tmp_path: pathlib.Path) -> None:
    """Records change under load: an added address is probed, then takes calls; a removed one
    gets no new calls (its calls in flight finish); the DNS server failing keeps the last
    known set, says so in /api/replicas and a metric; nothing fails throughout."""
    cfg = {"discovery": [{"name": "tf", "dns": NAME, "resolver": dns_server.address,
                          "rest_port": pair.rest_port, "grpc_port": pair.grpc_port,
                          "interval_s": 1, "pool": "gpu"}],
           "models": {MODEL: {}}}
    g = GatewayProc(cfg, tmp_path / "gw")
    try:
        reps, disc = _replicas(g)
        assert set(reps) == {"tf-127.0.0.2"} and disc[0]["stale"] is False
        load = Traffic(g.rest_port)
        time.sleep(1.0)
        dns_server.set_zone({"names": {NAME: {"ttl": 1, "A": ADDRS}}})
        _until("tf-127.0.0.3 takes calls",
               lambda: _replicas(g)[0].get("tf-127.0.0.3", {}).get("requests", 0) > 20)
        dns_server.set_zone({"names": {NAME: {"ttl": 1, "A": [ADDRS[1]]}}})
        _until("tf-127.0.0.2 is gone", lambda: "tf-127.0.0.2" not in _replicas(g)[0])
        served = _replicas(g)[0]["tf-127.0.0.3"]["requests"]
        dns_server.set_zone({"mode": "servfail", "names": {}})
        _until("the entry is stale", lambda: _replicas(g)[1][0]["stale"])
        reps, disc = _replicas(g)
        assert set(reps) == {"tf-127.0.0.3"}, "a failed answer must keep the last known set"
        _until("the stale metric", lambda: 'infergate_discovery_stale{discovery="tf"} 1.0'
               in g.metrics(), timeout=5)
        time.sleep(1.0)
        load.stop()
        assert _replicas(g)[0]["tf-127.0.0.3"]["requests"] > served
        print(f"\n[drill] DNS changes under load: {load.calls} calls, {len(load.failures)} failed")
        assert load.calls > 200
        assert not load.failures, load.failures[:5]
    finally:
        g.stop()


# ---------------------------------------------------------------- decisions that agree


@pytest.fixture
def redis_url() -> Iterator[str]:
    r = start_redis()
    yield r.url
    r.stop()


def _scale(g: GatewayProc) -> dict[str, Any]:
    status, body = g.api("/api/scale")
    assert status == 200
    return body


def test_three_gateways_on_one_redis_decide_as_one(pair: Replicas, redis_url: str,
                                                   tmp_path: pathlib.Path) -> None:
    """Traffic sent unevenly (all of it to one gateway): every gateway's /api/scale shows the
    fleet's rps and the same decision; SIGKILL the leader and the other two go on agreeing."""
    replicas = [{"name": f"r{i}", "rest": f"{a}:{pair.rest_port}", "grpc": f"{a}:{pair.grpc_port}",
                 "pool": "gpu", "capacity_rps": 10} for i, a in enumerate(ADDRS)]
    cfg = {"replicas": replicas, "cache": {"store": redis_url}, "scale_eval_s": 0.5,
           "models": {MODEL: {}},
           "autoscale": {"gpu": {"min_replicas": 1, "max_replicas": 8, "window_up_s": 1,
                                 "window_down_s": 5}}}
    gws = [GatewayProc(cfg, tmp_path / f"gw{i}", name=f"gw{i}") for i in range(3)]
    load: Traffic | None = None
    try:
        load = Traffic(gws[0].rest_port, threads=4)

        def agreed(group: list[GatewayProc]) -> bool:
            docs = [_scale(g) for g in group]
            pools = [d["pools"].get("gpu") for d in docs]
            return (all(p is not None for p in pools)
                    and len({(p["desired_replicas"], p["direction"]) for p in pools}) == 1
                    and all(d["fleet"]["instances"] == len(gws) for d in docs)
                    and pools[0]["desired_replicas"] > 2
                    and all((p["signals"]["rps"] or 0) > 10 for p in pools))

        _until("the three gateways agree on scaling up from the fleet's load",
               lambda: agreed(gws), timeout=30)
        roles = sorted(_scale(g)["fleet"]["role"] for g in gws)
        assert roles == ["follower", "follower", "leader"], roles
        leader = next(g for g in gws if _scale(g)["fleet"]["role"] == "leader")
        if leader is gws[0]:  # keep the traffic's gateway: stop the load's target last
            load.stop()
            load = Traffic(gws[1].rest_port, threads=4)
        leader.signal(signal.SIGKILL)
        leader.proc.wait(10)
        rest = [g for g in gws if g is not leader]
        _until("a new leader among the two left",
               lambda: sorted(_scale(g)["fleet"]["role"] for g in rest) == ["follower", "leader"],
               timeout=20)
        _until("the two left agree", lambda: len({
            (_scale(g)["pools"]["gpu"]["desired_replicas"]) for g in rest}) == 1, timeout=10)
        load.stop()
        assert not load.failures, load.failures[:5]
    finally:
        if load is not None:
            load.stop()
        for g in gws:
            g.stop()


# ---------------------------------------------------------------- --workers N is one gateway


def test_two_workers_are_one_gateway_from_outside(pair: Replicas, tmp_path: pathlib.Path) -> None:
    """`--workers 2`: calls spread over both workers (SO_REUSEPORT), /metrics counts all of
    them, /api/scale sees both workers (no Redis: the workers share a folder)."""
    replicas = [{"name": f"r{i}", "rest": f"{a}:{pair.rest_port}", "grpc": f"{a}:{pair.grpc_port}"}
                for i, a in enumerate(ADDRS)]
    admin, rest, grpc_port = free_port(), free_port(), free_port()
    cfg = {"listen": {"rest": f"127.0.0.1:{rest}", "grpc": f"127.0.0.1:{grpc_port}",
                      "admin": f"127.0.0.1:{admin}"},
           "replicas": replicas, "scale_eval_s": 0.5, "models": {MODEL: {}}}
    path = tmp_path / "workers.yaml"
    path.write_text(json.dumps(cfg))
    log = open(log_dir() / f"workers-{os.getpid()}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "gateway.commands.cli", "run", "--config",
                             str(path), "--workers", "2"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        _until("ready", lambda: _ok(f"http://127.0.0.1:{admin}/readyz"), timeout=30)
        time.sleep(1.0)  # both workers listening
        calls = 400
        for _ in range(calls):  # a new connection each: the kernel spreads them
            conn = http.client.HTTPConnection("127.0.0.1", rest, timeout=10)
            conn.request("POST", f"/v1/models/{MODEL}:predict", b'{"instances": [1.0]}',
                         {"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conn.close()

        def counted() -> float:
            _, body = http_get(f"http://127.0.0.1:{admin}/metrics")
            return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                       if line.startswith("infergate_requests_total{") and MODEL in line)

        _until(f"/metrics counts all {calls} calls", lambda: counted() == calls, timeout=10)
        _until("/api/scale sees both workers", lambda: json.loads(
            http_get(f"http://127.0.0.1:{admin}/api/scale")[1])["fleet"]["instances"] == 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _ok(url: str) -> bool:
    try:
        return http_get(url, 1.0)[0] == 200
    except OSError:
        return False
