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
import threading
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
    by zone would). The fleet does not change, so no call should notice, not even calls sent
    the moment a reload answers.

    The replica set keeps a replica's observed state across a reload by its addresses, so a
    renamed entry stays routable; keyed by name alone, each rename started all three unprobed
    and calls got 503 'No healthy replica' until the first probe answered."""
    g = gateway_factory(catalog_config(fleet3))
    load = start_load("reloads renaming replicas (REST)",
                      rest_predict_client("127.0.0.1", g.rest_port))
    configs = []
    for i in range(6):
        cfg = catalog_config(fleet3)
        for r in cfg["replicas"]:
            r["name"] = f"gen{i}-{r['name']}"
        configs.append(cfg)
    reloads_with_bursts(g, load, configs)


def catalog_config(slots: list[Slot]) -> dict[str, Any]:
    """drill_config plus 40 more models (a multi-model fleet): the first probe of a replica
    new to the gateway asks for every watched model, so it takes longer than the probe a call
    for one model waits for; calls fall into the difference."""
    out = drill_config(slots)
    out["models"].update({f"catalog-{i}": {} for i in range(40)})
    return out


def test_reload_onto_replicas_never_probed(fleet3: list[Slot], gateway_factory: Any) -> None:
    """Reloads that move the gateway between serving replicas it has not probed yet (r0 alone,
    then r1 and r2, and back), as a migration to new hosts does. They all serve: no call
    should fail (see catalog_config for the window calls fall into)."""
    g = gateway_factory(catalog_config(fleet3[:1]))
    load = start_load("reloads onto replicas never probed (REST)",
                      rest_predict_client("127.0.0.1", g.rest_port))
    reloads_with_bursts(g, load, [catalog_config(fleet3[1:] if i % 2 == 0 else fleet3[:1])
                                  for i in range(8)])


def reloads_with_bursts(g: GatewayProc, load: Load, configs: list[dict[str, Any]]) -> None:
    """Reload to each config in turn under `load`; the moment each reload answers, 16
    kept-alive connections send one call each. No call of either kind may fail."""
    burst_failures: list[str] = []
    for cfg in configs:
        with Burst(g.rest_port, 16) as burst:
            status, body = g.reload(cfg)
            assert status == 200 and body["ok"] is True, body
            burst_failures += burst.fire()
        load.wait_more(80)
    report = finish(load, g)
    print(f"[drill] plus {len(configs)} bursts of 16 calls sent the moment each reload "
          f"answered: {len(burst_failures)} failed")
    assert_no_failures(report)
    assert not burst_failures, burst_failures[:3]


class Burst:
    """`n` keep-alive connections, each warmed up by one call, that all send one more call the
    moment fire() is called: calls that reach the gateway right after something it just did."""

    def __init__(self, port: int, n: int) -> None:
        self._clients = [rest_predict_client("127.0.0.1", port)() for _ in range(n)]
        for i, send in enumerate(self._clients):
            ok, what = send(i)
            assert ok, what
        self._go = threading.Event()
        self._results: list[tuple[bool, str]] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._one, args=(send, i), daemon=True)
                         for i, send in enumerate(self._clients)]
        for t in self._threads:
            t.start()

    def _one(self, send: Any, i: int) -> None:
        self._go.wait(30)
        result = send(i)
        with self._lock:
            self._results.append(result)

    def fire(self) -> list[str]:
        """Send every call now; the failures (empty when all were good)."""
        self._go.set()
        for t in self._threads:
            t.join(30)
        return [what for ok, what in self._results if not ok]

    def __enter__(self) -> Burst:
        return self

    def __exit__(self, *exc: object) -> None:
        self._go.set()


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


@pytest.mark.parametrize("engine", ["compat", "native"])
def test_gateway_sigterm_drains_in_flight_calls(fleet3: list[Slot], gateway_on: Any,
                                                engine: str) -> None:
    """SIGTERM the gateway while REST and gRPC calls are in flight (replicas answer in 300-500
    ms, so every worker always has one, at staggered stages): every call in flight finishes with
    a good answer, new connections are refused at once (while those calls still run), the
    process exits 0.

    Calls a worker starts after SIGTERM on its kept-alive connection are not in flight; their
    outcome is printed, not asserted."""
    for s in fleet3:
        assert s.proc is not None
        s.proc.set_knobs(latency_ms=300, latency_jitter_ms=200)
    g = gateway_on(drill_config(fleet3, limits={"drain_s": 10}), engine)
    with grpc.insecure_channel(g.grpc_addr) as channel:
        loads = [Load(f"gateway SIGTERM drain (REST, {engine} engine)",
                      rest_predict_client("127.0.0.1", g.rest_port),
                      concurrency=10, max_calls=MAX_CALLS),
                 Load(f"gateway SIGTERM drain (gRPC, {engine} engine)",
                      grpc_predict_client(channel), concurrency=8, max_calls=MAX_CALLS)]
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


@pytest.mark.parametrize("engine", ["compat", "native"])
def test_drain_waits_for_a_call_still_sending_its_body(fleet3: list[Slot], gateway_on: Any,
                                                       engine: str) -> None:
    """A client has sent the headers and half the body when SIGTERM arrives; the rest follows
    200 ms later. The call started before SIGTERM, so the drain must let it finish."""
    g = gateway_on(drill_config(fleet3, limits={"drain_s": 10}), engine)
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


def _read_answer(sock: socket.socket) -> bytes:
    """One HTTP/1.1 answer with a Content-Length body (or what arrived before the close)."""
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk
    head, _, rest = out.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


@pytest.mark.parametrize("engine", ["compat", "native"])
def test_a_call_on_a_kept_alive_connection_during_the_drain_is_served(
        fleet3: list[Slot], gateway_on: Any, engine: str) -> None:
    """SIGTERM arrives while a call is in flight; a new call on another connection that was
    already open (keep-alive) is served, not refused, and its answer closes the connection, so
    the client's next call goes to another instance."""
    for s in fleet3:
        assert s.proc is not None
        s.proc.set_knobs(latency_ms=600)
    g = gateway_on(drill_config(fleet3, limits={"drain_s": 10}), engine)
    body = b'{"instances": [1.0, 2.0, 5.0]}'
    request = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
               f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", g.rest_port), timeout=10) as kept, \
            socket.create_connection(("127.0.0.1", g.rest_port), timeout=10) as busy:
        kept.sendall(request)
        first = _read_answer(kept)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        assert b"connection: close" not in first.lower()  # kept alive
        busy.sendall(request)  # in flight at SIGTERM: keeps the drain open
        time.sleep(0.2)
        g.signal(signal.SIGTERM)
        time.sleep(0.2)
        kept.sendall(request)  # a new call on the kept-alive connection, during the drain
        late = _read_answer(kept)
        in_flight = _read_answer(busy)
    rc = g.stop()
    assert late.startswith(b"HTTP/1.1 200"), late[:300]
    assert b"connection: close" in late.lower(), late[:300]
    assert in_flight.startswith(b"HTTP/1.1 200"), in_flight[:300]
    assert rc == 0
