"""Everyday operations under load, as an operator runs them: rolling restarts and kills of every
replica, the gateway's own update (SIGTERM with a drain delay), draining a replica on purpose,
and a flood of model names no replica serves. Each drill prints its figures (run with -s).

The gateway runs with its defaults here (health every 2 s, rise 2 / fall 3, 3 attempts, a 20 %
retry budget, no per-try timeout): what an operator gets without tuning.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.faults.conftest import MODEL, Slot
from tests.faults.drill import assert_no_failures, finish, replicas_view, start_load
from tests.faults.load import Load, grpc_predict_client, half_plus_three, rest_predict_client
from tests.integration.gwproc import ROOT, GatewayProc
from tests.support.procs import http_get, start_redis

pytestmark = pytest.mark.integration

SETTLE_S = 3.0  # the next replica goes this long after the previous one serves again
UNBOUNDED = 1_000_000  # a bound never reached: the drill stops its load itself


def defaults(slots: list[Slot], **extra: Any) -> dict[str, Any]:
    """The gateway's defaults in front of the trio (GatewayProc would otherwise speed up the
    health checks: an explicit empty section keeps the defaults)."""
    return {"replicas": [s.cfg() for s in slots], "health": {}, **extra}


def rolling(fleet: list[Slot], load: Load, how: str) -> None:
    for slot in fleet:
        if how == "SIGKILL":
            slot.kill()
        else:
            slot.terminate()
        slot.start()
        load.wait_more(50)
        time.sleep(SETTLE_S)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_rolling_restart_rest(fleet3: list[Slot], gateway_on: Any, how: str) -> None:
    """Every replica in turn stopped (SIGTERM: TF Serving exits at once; SIGKILL) and started
    again on its ports while 16 REST clients send without pause: no call fails. Refused
    connections go to the next replica outside the retry budget and mark the replica down;
    calls cut off mid-flight are retried; a replica back and passing probes takes traffic."""
    g = gateway_on(defaults(fleet3), "native")
    load = start_load(f"rolling {how} of 3 replicas (REST, defaults)",
                      rest_predict_client("127.0.0.1", g.rest_port), rate=None,
                      max_calls=UNBOUNDED)
    rolling(fleet3, load, how)
    report = finish(load, g)
    assert_no_failures(report)
    assert report.phase("during").calls > 0


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_rolling_restart_grpc(fleet3: list[Slot], gateway_on: Any, how: str) -> None:
    """The same rolling stop with 16 gRPC clients (official stubs, one channel)."""
    g = gateway_on(defaults(fleet3), "native")
    with grpc.insecure_channel(g.grpc_addr) as channel:
        load = start_load(f"rolling {how} of 3 replicas (gRPC, defaults)",
                          grpc_predict_client(channel), rate=None,
                          max_calls=UNBOUNDED)
        rolling(fleet3, load, how)
        report = finish(load, g)
    assert_no_failures(report)


# ---------------------------------------------------------------- the gateway's own update


def _predict_on_new_connection(port: int) -> tuple[int, str]:
    """One REST predict on a connection opened for it: (status, Connection header)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/v1/models/{MODEL}:predict", json.dumps({"instances": [1.0]}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert body == {"predictions": [half_plus_three(1.0)]}, body
        return resp.status, resp.getheader("Connection") or ""
    finally:
        conn.close()


@pytest.mark.parametrize("engine", ["native", "compat"])
def test_gateway_sigterm_serves_through_the_drain_delay(fleet3: list[Slot], gateway_on: Any,
                                                        engine: str) -> None:
    """SIGTERM with limits.drain_delay_s: /readyz fails at once, yet connections opened during
    the delay are served (as Kubernetes keeps sending them until the endpoint removal has
    spread), their answers close the connection; after the delay the listeners close and the
    process exits 0."""
    delay = 3.0
    g = gateway_on(defaults(fleet3, limits={"drain_delay_s": delay, "drain_s": 5}), engine)
    load = start_load(f"gateway SIGTERM with a {delay:g} s drain delay ({engine})",
                      rest_predict_client("127.0.0.1", g.rest_port), rate=200.0, warmup=200)
    served = 0
    with grpc.insecure_channel(g.grpc_addr) as channel:  # a gRPC client arriving late too
        grpc_send = grpc_predict_client(channel)()  # built (TensorFlow imported) beforehand
        t0 = time.monotonic()
        g.signal(signal.SIGTERM)
        while http_get(g.admin_url + "/readyz", timeout=2.0)[0] != 503:
            assert time.monotonic() - t0 < 1.0, "/readyz still passes after SIGTERM"
            time.sleep(0.02)
        while time.monotonic() - t0 < delay - 1.0:
            code, connection = _predict_on_new_connection(g.rest_port)
            assert code == 200 and connection.lower() == "close"
            ok, what = grpc_send(served)
            assert ok, what
            served += 1
            time.sleep(0.05)
    load.stop()
    report = load.join(30.0)
    print("\n" + report.summary())
    print(f"[drill] new connections served during the delay: {served}")
    assert served >= 10
    # The load's clients reconnect when told to close; calls after the listeners closed fail
    # to connect, which a client behind a Service would not see: count only the delay.
    early = [s for s in report.failures if s.start < t0 + delay - 0.5]
    assert not early, [s.what for s in early[:5]]
    assert g.proc.wait(timeout=20) == 0
    with pytest.raises(OSError):
        _predict_on_new_connection(g.rest_port)


# ---------------------------------------------------------------- draining a replica


def _drain_cli(g: GatewayProc, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gateway.commands.cli", "drain", *args,
                           "--admin", g.admin_url], capture_output=True, text=True, env=env,
                          timeout=60, cwd=ROOT)


def _served_by(g: GatewayProc) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in replicas_view(g).values():
        counts[r["name"]] = int(r["requests"])
    return counts


@pytest.fixture
def redis_url() -> Iterator[str]:
    r = start_redis()
    yield r.url
    r.stop()


def test_drain_replica_through_api_and_cli(fleet3: list[Slot], gateway_on: Any) -> None:
    """Drain r1 through the CLI while its calls are in flight (it holds each for 200 ms): they
    finish, no new call goes to it, the API says `draining`, a config reload keeps it drained,
    and undrain puts it back."""
    g = gateway_on(defaults(fleet3), "native")
    assert fleet3[1].proc is not None
    fleet3[1].proc.set_knobs(latency_ms=200)
    load = start_load("drain r1 under load (REST)", rest_predict_client("127.0.0.1", g.rest_port),
                      rate=200.0, warmup=200)
    res = _drain_cli(g, "r1", "--wait", "--timeout", "20")
    assert res.returncode == 0, res.stderr
    assert "drained, no call in flight" in res.stdout
    view = replicas_view(g)["r1"]
    assert view["draining"] is True and view["state"] == "draining"
    before = _served_by(g)["r1"]
    load.wait_more(300)
    status, body = g.reload(defaults(fleet3))  # a reload keeps the drain
    assert status == 200, body
    load.wait_more(300)
    assert replicas_view(g)["r1"]["state"] == "draining"
    assert _served_by(g)["r1"] == before, "a drained replica got new calls"
    res = _drain_cli(g, "r1", "--undrain")
    assert res.returncode == 0, res.stderr
    load.wait_more(400)
    report = finish(load, g)
    assert_no_failures(report)
    assert _served_by(g)["r1"] > before
    assert _drain_cli(g, "nope").returncode == 1


def test_drain_is_shared_through_redis(fleet3: list[Slot], gateway_on: Any,
                                       redis_url: str) -> None:
    """Two gateways on one Redis: a drain sent to one is applied by the other within a
    second or two, and so is the undrain."""
    cfg = defaults(fleet3, cache={"store": redis_url})
    a, b = gateway_on(cfg, "native"), gateway_on(cfg, "native")
    status, _ = a.api("/api/replicas/r2/drain", "POST")
    assert status == 200
    end = time.monotonic() + 10
    while replicas_view(b)["r2"]["state"] != "draining":
        assert time.monotonic() < end, "the second gateway never saw the drain"
        time.sleep(0.1)
    status, _ = b.api("/api/replicas/r2/undrain", "POST")
    assert status == 200
    while replicas_view(a)["r2"]["draining"]:
        assert time.monotonic() < end + 10, "the first gateway never saw the undrain"
        time.sleep(0.1)


# ---------------------------------------------------------------- hostile model names


FLOOD = int(os.environ.get("INFERGATE_FLOOD_NAMES", "20000"))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _replica_status_calls(slot: Slot) -> int:
    """Calls a replica answered that were not inference (status and metadata): its
    request_count minus its inference count, from its own Prometheus text."""
    status, body = http_get(f"http://127.0.0.1:{slot.rest_port}/monitoring/prometheus/metrics")
    assert status == 200
    total = inference = 0.0
    for line in body.decode().splitlines():
        if line.startswith(":tensorflow:serving:request_count{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("infergate_replica_inference_total{"):
            inference += float(line.rsplit(" ", 1)[1])
    return int(total - inference)


def _predict_ms(port: int, n: int = 50) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        conn.request("POST", f"/v1/models/{MODEL}:predict", json.dumps({"instances": [float(i)]}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        times.append(time.perf_counter() - t0)
    conn.close()
    times.sort()
    return times[len(times) // 2] * 1000


def test_flood_of_unknown_model_names(fleet3: list[Slot], gateway_on: Any) -> None:
    """20,000 requests for distinct random model names (16 clients): every answer is TF
    Serving's 404, the gateway keeps no per-name state (RSS grows by under 5 MB, /api/replicas
    shows none of the names), replica status probes stay within the discovery rate limit, and a
    normal predict afterwards is as fast as before."""
    rate = 20.0
    g = gateway_on(defaults(fleet3, health={"discovery_per_s": rate}), "native")
    port = g.rest_port
    before_ms = _predict_ms(port)
    probes_before = sum(_replica_status_calls(s) for s in fleet3)
    rss_before = _rss_kib(g.pid)
    rng = random.Random(7)
    names = ["".join(rng.choices(string.ascii_lowercase + string.digits, k=16))
             for _ in range(FLOOD)]
    bad: list[str] = []
    lock = threading.Lock()
    it = iter(names)

    def work() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                name = next(it, None)
            if name is None:
                break
            conn.request("POST", f"/v1/models/{name}:predict", b'{"instances": [1.0]}',
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            want = {"error": f"Servable not found for request: Latest({name})"}
            if resp.status != 404 or json.loads(body) != want:
                with lock:
                    bad.append(f"{name}: {resp.status} {body[:120]!r}")
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    took = time.monotonic() - t0
    rss_after = _rss_kib(g.pid)
    probes = sum(_replica_status_calls(s) for s in fleet3) - probes_before
    after_ms = _predict_ms(port)
    listed = sum(len(r["models"]) for r in replicas_view(g).values())
    print(f"\n[drill] {FLOOD} unknown names in {took:.1f} s ({FLOOD / took:.0f}/s); "
          f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB; status probes at the "
          f"replicas {probes} (limit {rate:g}/s x {took:.0f} s x 3 replicas + burst); predict "
          f"p50 {before_ms:.2f} ms before, {after_ms:.2f} ms after; models listed {listed}")
    assert not any(t.is_alive() for t in threads)
    assert not bad, bad[:5]
    assert took < 180
    assert rss_after - rss_before < 5 * 1024
    # Health rounds probe the one configured name; discovery adds at most `rate` names per
    # second (plus its burst), each probed once on each replica.
    health_rounds = (took / 2.0 + 2) * 3 * 2
    assert probes <= (rate * took + rate) * 3 + health_rounds, probes
    assert listed <= 3 * 2, "unknown names left state in /api/replicas"
    assert after_ms < max(3 * before_ms, before_ms + 5)
