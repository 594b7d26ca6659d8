"""Load-aware balancing end to end: least_loaded steers calls away from a replica that is slow
(peak-EWMA latency) or whose scraped GPU utilisation is high, and back when it recovers; a metrics
endpoint that serves garbage leaves the replica routable with its GPU reading unknown.

Two real replicas; the slow or busy one is made so with the replica's test knobs at run time.
Each test starts its own gateway, so no latency estimate carries over from another test.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from tests.integration.gwproc import GatewayProc
from tests.integration.test_routing_support import Req, failures, fire, metric, wait_until

MODEL = "half_plus_two"


@pytest.fixture
def knobs(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet, with every knob put back to off afterwards."""
    yield fleet
    for r in fleet.replicas:
        r.set_knobs(latency_ms=0, error_rate=0, gpu_util=None)


def ll_gateway(fleet: Fleet, gateway_factory: Any, **health: Any) -> GatewayProc:
    cfg: dict[str, Any] = {"replicas": fleet.replica_cfg(),
                           "models": {MODEL: {"balance": "least_loaded"}}}
    if health:
        cfg["health"] = {"interval_s": 0.5, "timeout_s": 1.0, "metrics_interval_s": 0.5, **health}
    return gateway_factory(cfg)


def shares(g: GatewayProc, n: int, concurrency: int = 4) -> Counter[str]:
    results = fire(g.rest_url, [Req()] * n, concurrency=concurrency)
    assert failures(results) == []
    return Counter(r.replica for r in results)


def replicas_json(g: GatewayProc) -> dict[str, dict[str, Any]]:
    status, body = g.api("/api/replicas")
    assert status == 200
    return {r["name"]: r for r in body["replicas"]}


def test_slow_replica_gets_a_small_share_and_recovers(knobs: Fleet, gateway_factory: Any) -> None:
    g = ll_gateway(knobs, gateway_factory)
    knobs.replicas[1].set_knobs(latency_ms=50)
    shares(g, 40)  # warm-up: both replicas measured
    slow = shares(g, 400)
    share = slow["r1"] / 400
    print(f"r1 at +50 ms: {slow['r1']}/400 = {share:.1%} of calls")
    assert share < 0.20
    knobs.replicas[1].set_knobs(latency_ms=0)
    t0 = time.monotonic()
    window: Counter[str] = Counter()

    def recovered() -> bool:
        # 30 of 100 is far out of reach for the slow replica (its share above), and about a fair
        # half is what equal replicas get.
        nonlocal window
        window = shares(g, 100)
        return window["r1"] >= 30

    wait_until(recovered, 30.0, "r1 to win back a share", interval=0.0)
    print(f"r1 back to {window['r1']}/100 of a window {time.monotonic() - t0:.1f} s after the "
          "latency knob was removed")


def test_busy_gpu_gets_a_small_share(knobs: Fleet, gateway_factory: Any) -> None:
    g = ll_gateway(knobs, gateway_factory)
    knobs.replicas[0].set_knobs(gpu_util=0.10)
    knobs.replicas[1].set_knobs(gpu_util=0.95)
    wait_until(lambda: {n: r["gpu_util"] for n, r in replicas_json(g).items()}
               == {"r0": 0.10, "r1": 0.95}, 10.0, "the gateway to scrape both GPU readings")
    shares(g, 40)  # warm-up: both replicas measured
    busy = shares(g, 400)
    share = busy["r1"] / 400
    print(f"r1 at 95 % GPU (r0 at 10 %): {busy['r1']}/400 = {share:.1%} of calls")
    assert share < 0.20
    # Back to 10 %: the scrape is read at once and the share comes back.
    knobs.replicas[1].set_knobs(gpu_util=0.10)
    wait_until(lambda: replicas_json(g)["r1"]["gpu_util"] == 0.10, 10.0, "the new reading")
    wait_until(lambda: shares(g, 100)["r1"] >= 30, 15.0, "r1 to win back a share", interval=0.0)
    # No DCGM sample any more: unknown, not idle.
    knobs.replicas[1].set_knobs(gpu_util=None)
    wait_until(lambda: replicas_json(g)["r1"]["gpu_util"] is None, 10.0, "r1's reading to go unknown")


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


# What a broken or impostor metrics endpoint may answer, one per connection in turn. The last
# four are well-formed exposition with values no GPU can report; they must read as unknown too.
GARBAGE = [
    _ok(b"<html><body>not metrics</body></html>"),
    _ok(b'{"gpu": 0.1}'),
    _ok(b"\x00\xff\xfe\x00 binary \xc3\x28 noise\n"),
    b"\x00\xff garbage instead of an HTTP response\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ntruncated",
    _ok(b"not gzip at all", b"Content-Encoding: gzip\r\n"),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"",  # connection closed without a word
    _ok(b'DCGM_FI_DEV_GPU_UTIL{gpu="0"} banana\n'),
    _ok(b'DCGM_FI_DEV_GPU_UTIL{gpu="0"} -50\n'),
    _ok(b'DCGM_FI_DEV_GPU_UTIL{gpu="0"} 250\n'),
    _ok(b'DCGM_FI_DEV_GPU_UTIL{gpu="0"} +Inf\nDCGM_FI_DEV_FB_USED{gpu="0"} -1\n'),
]


class GarbageServer:
    """A loopback TCP server that answers each connection with the next GARBAGE entry."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.served = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    conn.settimeout(2.0)
                    conn.recv(65536)
                    conn.sendall(GARBAGE[self.served % len(GARBAGE)])
                except OSError:
                    pass  # the scraper gave up first: the next connection gets the next entry
                self.served += 1

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


def test_garbage_metrics_endpoint_reads_unknown(knobs: Fleet, gateway_factory: Any) -> None:
    server = GarbageServer()
    try:
        replicas = knobs.replica_cfg()
        replicas[1]["metrics"] = server.url
        g = gateway_factory({
            "replicas": replicas, "models": {MODEL: {"balance": "least_loaded"}},
            # Scrape fast, and let a reading go stale fast: if scraping stopped, r0's would.
            "health": {"interval_s": 0.5, "timeout_s": 1.0, "metrics_interval_s": 0.1,
                       "metrics_stale_s": 1.0}})
        knobs.replicas[0].set_knobs(gpu_util=0.5)
        wait_until(lambda: replicas_json(g)["r0"]["gpu_util"] == 0.5, 10.0, "r0's GPU reading")
        start = server.served
        seen: list[dict[str, Any]] = []

        def two_rounds() -> bool:
            seen.append(replicas_json(g)["r1"])
            return server.served >= start + 2 * len(GARBAGE)

        wait_until(two_rounds, 30.0, "two rounds of garbage", interval=0.05)
        assert [r["gpu_util"] for r in seen] == [None] * len(seen)
        assert all(r["routable"] for r in seen)
        reps = replicas_json(g)
        assert reps["r0"]["gpu_util"] == 0.5  # still fresh: scraping goes on
        assert reps["r1"]["gpu_util"] is None and reps["r1"]["cpu_util"] is None
        text = g.metrics()
        assert metric(text, "infergate_metrics_scrape_failures_total", replica="r1") >= len(GARBAGE)
        assert metric(text, "infergate_metrics_scrape_failures_total", replica="r0") == 0
        assert metric(text, "infergate_replica_gpu_utilization", replica="r1") in (-1.0, 0.0)
        # Unknown is neutral, neither idle nor saturated: r1 keeps a fair share.
        spread = shares(g, 200)
        print(f"r1 with a garbage metrics endpoint: {spread['r1']}/200 of calls "
              f"(r0 at 50 % GPU, r1 unknown = neutral 50 %)")
        assert spread["r1"] >= 0.15 * 200
        assert g.proc.poll() is None
        assert "Traceback" not in g.log() and "died" not in g.log()
    finally:
        server.close()
