"""Faults around the gateway itself under steady load: Redis dies, config reloads (bad and good),
and the gateway is told to stop (SIGTERM) with calls in flight.

Same load and counting as test_replica_faults.py: zero failed calls is the bar, per-phase p99 is
printed (run with -s). The drain drill counts differently (see its docstring): calls in flight at
SIGTERM must all succeed; what happens to calls made after it is reported.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.faults.conftest import MODEL, Slot, drill_config
from tests.faults.drill import (
    MAX_CALLS,
    assert_no_failures,
    counter_total,
    finish,
    start_load,
)
from tests.faults.load import Load, Sample, grpc_predict_client, rest_predict_client
from tests.integration.gwproc import GatewayProc
from tests.support.procs import RedisProc, start_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def redis() -> Iterator[RedisProc]:
    r = start_redis()
    yield r
    r.stop()


def cache_stats(g: GatewayProc) -> dict[str, Any]:
    status, body = g.api("/api/cache")
    assert status == 200
    return dict(body["models"][MODEL]["stats"])


def half_unique(n: int) -> float:
    """Odd calls carry a value never seen before (a miss in memory, so Redis is asked), even
    calls one of 100 values (memory hits once warm)."""
    return float(n) if n % 2 else float(n % 100)


def test_redis_killed(fleet3: list[Slot], gateway_factory: Any, redis: RedisProc) -> None:
    """SIGKILL the shared cache's Redis mid-load. Reads that were waiting on it time out (50 ms)
    as misses, the circuit opens, the gateway runs memory-only; no call may fail."""
    cfg = drill_config(fleet3, cache={"store": redis.url})
    cfg["models"][MODEL]["cache"] = {"exact": {"ttl_s": 60}}
    g = gateway_factory(cfg)
    load = start_load("Redis SIGKILL (REST, exact cache on Redis)",
                      rest_predict_client("127.0.0.1", g.rest_port, value=half_unique))
    assert cache_stats(g)["redis_hits"] + cache_stats(g)["redis_misses"] > 0, "Redis never asked"
    os.kill(redis.pid, signal.SIGKILL)
    redis.stop()
    end = time.monotonic() + 20
    while cache_stats(g)["redis_circuit_state"] != 2:  # open: the tier is skipped
        assert time.monotonic() < end, f"circuit never opened: {cache_stats(g)}"
        time.sleep(0.05)
    report = finish(load, g)
    st = cache_stats(g)
    report.notes.update(redis_errors=st["redis_errors"], memory_hits=st["hits_memory"])
    print(f"[drill] Redis SIGKILL: redis errors {st['redis_errors']}, memory hits "
          f"{st['hits_memory']}, misses {st['misses']}")
    assert_no_failures(report)


def test_invalid_config_reloads_change_nothing(fleet3: list[Slot], gateway_factory: Any) -> None:
    """Three bad files (broken YAML, an unknown key, a route to a label that does not exist) are
    refused by the admin reload and by the file watcher; the old config keeps serving."""
    g = gateway_factory(drill_config(fleet3))
    load = start_load("invalid config reloads (REST)",
                      rest_predict_client("127.0.0.1", g.rest_port))
    bad_texts = [
        "replicas: [\n  {name: r0\n",  # unclosed flow mapping
        "replicas: []\nmodels: {half_plus_two: {balance: round_robin, retry_everything: true}}\n",
        "models:\n  half_plus_two:\n    routes: [{split: {nosuchlabel: 100}}]\n",
    ]
    for text in bad_texts:
        g.config_path.write_text(text)
        status, body = g.api("/api/reload", "POST")
        assert status == 400 and body["ok"] is False, body
        load.wait_more(100)
    time.sleep(1.5)  # the file watcher sees the last bad file too, and refuses it
    g.write_config(g.cfg)  # the good file back, so the watcher has nothing left to refuse
    report = finish(load, g)
    refused = counter_total(g, "infergate_config_reloads_total")
    print(f"[drill] invalid config reloads: {refused} reload attempts counted")
    assert_no_failures(report)
    assert g.api("/api/config")[1]["config"]["replicas"][0]["name"] == "r0"


def test_valid_config_reloads(fleet3: list[Slot], gateway_factory: Any) -> None:
    """Six valid reloads under load: balancer, labels, routes, hedging and health settings
    change; the replicas stay, so their observed health carries over the swap."""
    base = drill_config(fleet3)
    g = gateway_factory(base)
    load = start_load("valid config reloads (REST)",
                      rest_predict_client("127.0.0.1", g.rest_port))
    variants: list[dict[str, Any]] = []
    for i in range(6):
        cfg = drill_config(fleet3)
        model = cfg["models"][MODEL]
        model["balance"] = ["least_request", "round_robin", "least_loaded"][i % 3]
        model["labels"] = {"stable": 1, "canary": 2}
        model["routes"] = [{"match": {"headers": {"x-canary": "always"}}, "split": {"canary": 100}}]
        if i % 2:
            model["hedge"] = {"delay_ms": 200}
        cfg["health"] = dict(cfg["health"], interval_s=0.5 + 0.1 * (i % 2))
        variants.append(cfg)
    for cfg in variants:
        status, body = g.reload(cfg)
        assert status == 200 and body["ok"] is True, body
        load.wait_more(100)
    report = finish(load, g)
    assert_no_failures(report)


def test_reload_that_renames_replicas(fleet3: list[Slot], gateway_factory: Any) -> None:
    """Valid reloads that give the same three replicas new names (as a config moved to names
    by zone would). The fleet does not change, so no call should notice.

    Renamed entries start with no observed state; what keeps calls from a moment with no
    routable replica is that the reload probes every replica at once and that a call for a
    model no replica is known to serve waits for the discovery probe."""
    g = gateway_factory(drill_config(fleet3))
    load = start_load("reloads renaming replicas (REST)",
                      rest_predict_client("127.0.0.1", g.rest_port))
    for i in range(6):
        cfg = drill_config(fleet3)
        for r in cfg["replicas"]:
            r["name"] = f"gen{i}-{r['name']}"
        status, body = g.reload(cfg)
        assert status == 200 and body["ok"] is True, body
        load.wait_more(80)
    report = finish(load, g)
    assert_no_failures(report)


# ---------------------------------------------------------------- graceful drain

SURELY_SENT_S = 0.05  # a call started this long before SIGTERM has reached the gateway


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


def outcomes(samples: list[Sample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        key = "ok" if s.ok else s.what[:60]
        out[key] = out.get(key, 0) + 1
    return out


def test_gateway_sigterm_drains_in_flight_calls(fleet3: list[Slot], gateway_factory: Any) -> None:
    """SIGTERM the gateway while REST and gRPC calls are in flight (replicas answer in 300-500
    ms, so every worker always has one, at staggered stages): every call in flight finishes with
    a good answer, new connections are refused at once (while those calls still run), the
    process exits 0.

    Calls a worker starts after SIGTERM on its kept-alive connection are not in flight; their
    outcome is printed, not asserted."""
    for s in fleet3:
        assert s.proc is not None
        s.proc.set_knobs(latency_ms=300, latency_jitter_ms=200)
    g = gateway_factory(drill_config(fleet3, limits={"drain_s": 10}))
    with grpc.insecure_channel(g.grpc_addr) as channel:
        loads = [Load("gateway SIGTERM drain (REST)", rest_predict_client("127.0.0.1", g.rest_port),
                      concurrency=10, max_calls=MAX_CALLS),
                 Load("gateway SIGTERM drain (gRPC)", grpc_predict_client(channel),
                      concurrency=8, max_calls=MAX_CALLS)]
        for load in loads:
            load.start()
        for load in loads:
            load.wait_done(40)
        t_sig = loads[0].mark("SIGTERM")
        loads[1].mark("SIGTERM")
        g.signal(signal.SIGTERM)
        end = time.monotonic() + 2.0
        while not refused(g.rest_port):
            assert time.monotonic() < end, "REST listener still accepts 2 s after SIGTERM"
            time.sleep(0.01)
        refused_at = time.monotonic() - t_sig
        alive_when_refused = g.proc.poll() is None
        rc = g.proc.wait(timeout=30)
        for load in loads:
            load.stop()
        reports = [load.join(30.0) for load in loads]
    for report in reports:
        done_before = [s for s in report.samples if s.start + s.latency <= t_sig]
        in_flight = [s for s in report.samples
                     if s.start < t_sig - SURELY_SENT_S and s.start + s.latency > t_sig]
        late = [s for s in report.samples if s.start >= t_sig]
        print(f"\n[drill] {report.drill}: {len(done_before)} calls done before SIGTERM "
              f"({outcomes(done_before)}), {len(in_flight)} in flight at SIGTERM "
              f"({outcomes(in_flight)}), p99 in flight "
              f"{max((s.latency for s in in_flight), default=0) * 1000:.0f} ms; "
              f"{len(late)} started after SIGTERM: {outcomes(late)}; listener refused "
              f"{refused_at * 1000:.0f} ms after SIGTERM; exit code {rc}")
        assert all(s.ok for s in done_before), outcomes(done_before)
        assert len(in_flight) >= 3, "the drill needs calls in flight at SIGTERM"
        assert all(s.ok for s in in_flight), f"{report.drill}: {outcomes(in_flight)}"
    assert alive_when_refused, "the listener should close at once, not when the process exits"
    assert rc == 0, g.log()[-3000:]


@pytest.mark.xfail(strict=True, reason=(
    "gateway/app.py drain_and_stop waits only while total_in_flight > 0, which counts upstream "
    "attempts; a REST call still reading its body (or in admission, a cache lookup, model "
    "discovery) is not counted, so the drain ends at once and the call's connection is cut. "
    "Fix: count calls from ingress entry to the last byte written (gw.active_calls, in "
    "ingress_rest/ingress_grpc) and wait on that."))
def test_drain_waits_for_a_call_still_sending_its_body(fleet3: list[Slot],
                                                       gateway_factory: Any) -> None:
    """A client has sent the headers and half the body when SIGTERM arrives; the rest follows
    200 ms later. The call started before SIGTERM, so the drain must let it finish."""
    g = gateway_factory(drill_config(fleet3, limits={"drain_s": 10}))
    body = b'{"instances": [1.0, 2.0, 5.0]}'
    head = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", g.rest_port), timeout=10) as sock:
        sock.sendall(head + body[:10])
        time.sleep(0.2)  # the gateway has the headers and waits for the body
        g.signal(signal.SIGTERM)
        time.sleep(0.2)
        try:
            sock.sendall(body[10:])
            answer = sock.recv(65536)
        except OSError as exc:
            answer = f"connection error: {exc!r}".encode()
    rc = g.stop()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200] or "connection closed, no answer"
    assert rc == 0
