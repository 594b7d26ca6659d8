"""Scale signals from a real gateway in front of a real replica.

A load ramp against a replica slowed by its latency knob raises the desired replica count once the
scale-up stabilisation window has passed, with a reason naming p95_latency_ms; when the load stops
the count falls only after the scale-down window. A webhook receiver that is down when the first
transition fires still gets it, and gets every transition once. A metrics source that answers
garbage or nothing makes gpu_util unknown, and unknown never lets a pool scale down. /api/scale has
exactly the shape of the documented contract, and the desired count is in /metrics.

Each pool's decisions are read from /api/scale by a polling thread; nothing asserts on speed, only
on order and on lower bounds the stabilisation windows guarantee.
"""

from __future__ import annotations

import json
import pathlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.conftest import model_config
from tests.integration.gwproc import GatewayProc, free_port, http
from tests.support.procs import ReplicaProc, start_replica

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WINDOW_UP_S = 2.0
WINDOW_DOWN_S = 5.0
EVAL_S = 0.5
SIGNAL_KEYS = {"p95_latency_ms", "queue_depth", "gpu_util", "cpu_util", "rps", "capacity_rps"}
# The contract (DESIGN.md) plus the brownout level of the pool (0..1; the cost ladder).
POOL_KEYS = {"current_replicas", "desired_replicas", "direction", "reason", "signals", "brownout"}


@pytest.fixture(scope="module")
def replica(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProc]:
    """One replica process; gateway configs name it several times to make pools of any size."""
    cfg = model_config(models_dir, tmp_path_factory.mktemp("scale") / "models.config")
    r = start_replica(cfg, name="scale")
    yield r
    r.stop()


def entry(r: ReplicaProc, name: str, pool: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "rest": f"127.0.0.1:{r.rest_port}", "grpc": f"127.0.0.1:{r.grpc_port}",
            "pool": pool, **extra}


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class ScaleWatch:
    """Polls GET /api/scale from a thread; keeps (monotonic time, pools) in order."""

    def __init__(self, g: GatewayProc) -> None:
        self.g = g
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, out = self.g.api("/api/scale")
            if status == 200:
                self.seen.append((time.monotonic(), out["pools"]))
            time.sleep(0.1)

    def pool(self, name: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        return [(t, p[name]) for t, p in list(self.seen) if t >= since and name in p]

    def first(self, name: str, pred: Callable[[dict[str, Any]], bool],
              since: float = 0.0) -> tuple[float, dict[str, Any]] | None:
        return next(((t, p) for t, p in self.pool(name, since) if pred(p)), None)

    def __enter__(self) -> ScaleWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Load:
    """Closed-loop clients, each sending one predict call after another until stopped."""

    def __init__(self, g: GatewayProc) -> None:
        self.g = g
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add_client(self) -> None:
        t = threading.Thread(target=self._run, daemon=True)
        self._threads.append(t)
        t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            status, _, _ = http("POST", self.g.rest_url + "/v1/models/half_plus_two:predict",
                                {"instances": [1.0]})
            self.sent += 1
            self.failed += status != 200

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


@dataclass
class Receiver:
    """A webhook receiver: a real HTTP server in a thread, recording every JSON body it gets."""

    port: int
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    started_at: float | None = None
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                events.append((time.monotonic(), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass  # keep the test output quiet

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.started_at = time.monotonic()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class Ramp:
    """What one load-ramp run observed (shared by the tests that check it)."""

    watch: ScaleWatch
    receiver: Receiver
    load_started: float
    load_stopped: float
    rose_at: float
    fell_at: float
    failed: int
    sent: int


@pytest.fixture(scope="module")
def ramp(replica: ReplicaProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ramp]:
    """Ramp load up on a 50 ms replica, let the 'orchestrator' add the replica the gateway asks
    for, stop the load, and watch the count come back down. Bounded: about 25 s."""
    receiver = Receiver(free_port())
    autoscale = {"min_replicas": 1, "max_replicas": 4,
                 "up": {"p95_latency_ms": 20}, "down": {"p95_latency_ms": 10},
                 "window_up_s": WINDOW_UP_S, "window_down_s": WINDOW_DOWN_S}
    cfg: dict[str, Any] = {"replicas": [entry(replica, "r0", "gpu")],
                           "autoscale": {"gpu": autoscale}, "scale_eval_s": EVAL_S,
                           "webhooks": [{"url": f"http://127.0.0.1:{receiver.port}/hook"}]}
    g = GatewayProc(cfg, tmp_path_factory.mktemp("gw-ramp"))
    replica.set_knobs(latency_ms=50)
    load = Load(g)
    try:
        with ScaleWatch(g) as watch:
            wait_for("a first decision", lambda: watch.pool("gpu"), timeout=10)
            load_started = time.monotonic()
            for _ in range(3):  # the ramp: one more client a second
                load.add_client()
                time.sleep(1.0)
            rose_at, _ = wait_for("desired replicas to rise", lambda: watch.first(
                "gpu", lambda p: p["desired_replicas"] > 1), timeout=15)
            # The receiver comes up only now, while the first transition is being retried.
            time.sleep(2.0)
            receiver.start()
            # The orchestrator adds the replica asked for (the same process under a second name).
            cfg["replicas"].append(entry(replica, "r1", "gpu"))
            status, out = g.reload(cfg)
            assert status == 200 and out["ok"], out
            wait_for("the second replica to count", lambda: watch.first(
                "gpu", lambda p: p["current_replicas"] == 2, since=rose_at), timeout=10)
            time.sleep(1.0)
            load.stop()
            load_stopped = time.monotonic()
            fell_at, _ = wait_for("desired replicas to fall", lambda: watch.first(
                "gpu", lambda p: p["desired_replicas"] == 1, since=load_stopped), timeout=30)
            wait_for("the scale-down webhook", lambda: any(
                e["direction"] == "down" for _, e in receiver.events), timeout=10)
        yield Ramp(watch, receiver, load_started, load_stopped, rose_at, fell_at, load.failed,
                   load.sent)
    finally:
        load.stop()
        receiver.stop()
        replica.set_knobs(latency_ms=0)
        g.stop()


def test_load_ramp_scales_up_after_the_window_and_down_after_the_down_window(ramp: Ramp) -> None:
    assert ramp.failed == 0 and ramp.sent > 20
    up = ramp.watch.first("gpu", lambda p: p["desired_replicas"] > 1)
    assert up is not None
    t_up, rise = up
    assert rise["direction"] == "up" and rise["current_replicas"] == 1
    assert rise["desired_replicas"] == 2  # 50 %/60 s default rate from one replica
    assert rise["reason"].startswith("p95_latency_ms "), rise["reason"]
    assert rise["signals"]["p95_latency_ms"] > 20
    # Every recommendation in the last window_up_s must be high before the count rises; the
    # last low one can precede the first call by at most one evaluation period.
    assert t_up - ramp.load_started >= WINDOW_UP_S - EVAL_S

    # After the load stopped: held at 2 (by the scale-down window at the end), then down to 1.
    after = ramp.watch.pool("gpu", since=ramp.load_stopped)
    before_fall = [p for t, p in after if t < ramp.fell_at]
    assert before_fall and all(p["desired_replicas"] == 2 for p in before_fall)
    assert any("scale-down stabilisation" in p["reason"] for p in before_fall)
    assert ramp.fell_at - ramp.load_stopped >= WINDOW_DOWN_S
    fall = ramp.watch.first("gpu", lambda p: p["desired_replicas"] == 1, since=ramp.load_stopped)
    assert fall is not None
    assert fall[1]["direction"] == "down" and fall[1]["current_replicas"] == 2
    assert fall[1]["signals"]["rps"] == 0.0  # the load is out of the window


def test_webhook_receiver_gets_each_transition_once_even_when_it_was_down(ramp: Ramp) -> None:
    events = ramp.receiver.events
    assert ramp.receiver.started_at is not None and ramp.rose_at < ramp.receiver.started_at
    for _, e in events:
        assert e["event"] == "scale" and e["pool"] == "gpu"
        assert set(e) == {"event", "pool", "seq"} | POOL_KEYS
    marks = Counter((e["desired_replicas"], e["direction"]) for _, e in events)
    # Up (fired while the receiver was down), hold once the replica was added, down at the end.
    assert marks == Counter({(2, "up"): 1, (2, "hold"): 1, (1, "down"): 1}), events
    # Retries may deliver out of order; "seq" restores the order they happened in.
    ordered = sorted((e for _, e in events), key=lambda e: e["seq"])
    assert [e["direction"] for e in ordered] == ["up", "hold", "down"]
    assert [e["seq"] for e in ordered] == [1, 2, 3]
    up = next(e for _, e in events if e["direction"] == "up")
    assert up["reason"].startswith("p95_latency_ms ")


class GarbageMetrics:
    """An HTTP server that answers every GET with 200 and text that is not Prometheus exposition."""

    def __init__(self) -> None:
        hits = self.hits = [0]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                hits[0] += 1
                body = b"<html>this is not { prometheus text</html>\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_unknown_gpu_util_never_drives_a_scale_down(replica: ReplicaProc, gateway_factory: Any) -> None:
    garbage = GarbageMetrics()
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    pools = {"garbage": f"http://127.0.0.1:{garbage.port}/metrics",
             "silent": f"http://127.0.0.1:{silent.getsockname()[1]}/metrics", "control": None}
    replicas = []
    for pool, url in pools.items():
        for i in range(2):
            extra: dict[str, Any] = {"metrics": url} if url else {"capacity_rps": 100}
            replicas.append(entry(replica, f"{pool}{i}", pool, **extra))
    policy = {"min_replicas": 1, "window_up_s": 1, "window_down_s": 2}
    cfg = {"replicas": replicas, "scale_eval_s": EVAL_S, "autoscale": {p: policy for p in pools}}
    try:
        g: GatewayProc = gateway_factory(cfg)
        with ScaleWatch(g) as watch:
            # Without traffic every pool is idle; the control pool, whose signals are all known,
            # goes down once its window has passed. Then give the others as long again.
            t_down, _ = wait_for("the control pool to go down", lambda: watch.first(
                "control", lambda p: p["desired_replicas"] == 1), timeout=20)
            time.sleep(2 * policy["window_down_s"] + 1)
        assert garbage.hits[0] >= 1  # the garbage source was asked, and answered
        for pool in ("garbage", "silent"):
            seen = watch.pool(pool)
            assert len(seen) >= 10
            for _, p in seen:
                assert p["current_replicas"] == 2, p
                assert p["desired_replicas"] >= 2 and p["direction"] != "down", p
                assert p["signals"]["gpu_util"] is None and p["signals"]["cpu_util"] is None, p
            assert "gpu_util unknown" in seen[-1][1]["reason"], seen[-1][1]
            assert seen[-1][0] - t_down >= 2 * policy["window_down_s"]
        control = watch.first("control", lambda p: p["desired_replicas"] == 1)
        assert control is not None and control[1]["direction"] == "down"
        assert control[1]["signals"]["gpu_util"] is None  # not configured: left out, not unknown

        # The contract's shape, exactly, and the same count in Prometheus.
        status, out = g.api("/api/scale")
        assert status == 200 and set(out) == {"pools"} and set(out["pools"]) == set(pools)
        text = g.metrics()
        for name, p in out["pools"].items():
            assert set(p) == POOL_KEYS and set(p["signals"]) == SIGNAL_KEYS
            assert type(p["current_replicas"]) is int and type(p["desired_replicas"]) is int
            assert p["direction"] in {"up", "down", "hold"} and isinstance(p["reason"], str)
            assert p["reason"]
            assert type(p["signals"]["queue_depth"]) is int
            for key in SIGNAL_KEYS - {"queue_depth"}:
                assert p["signals"][key] is None or type(p["signals"][key]) is float, (key, p)
            line = f'infergate_scale_desired_replicas{{pool="{name}"}} {float(p["desired_replicas"])}'
            assert line in text.splitlines(), (line, text)
        assert out["pools"]["control"]["signals"]["capacity_rps"] == 200.0
        assert out["pools"]["control"]["signals"]["rps"] == 0.0
    finally:
        garbage.stop()
        silent.close()
