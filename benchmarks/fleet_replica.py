"""A fleet of light fixed-answer replicas in one asyncio process, each on its own port, that act
out a scenario of `benchmarks.fleet_scenarios` (`python -m benchmarks.fleet_replica`).

Why not the TF replica (`python -m replica`): on a 2-core machine TensorFlow would eat the core
the load generator needs and its own latency would wander with the balancer's CPU use, so the
balancers would no longer be the only variable. These replicas spend a few tens of microseconds
of CPU per call and take their time on timers, so their latency is what the scenario says.

Each replica speaks just enough of TF Serving's REST API (TFSERVING.md) for the gateway and the
baselines: GET /v1/models/M[/versions/N] -> model status with version 1 AVAILABLE; POST
...:predict -> a fixed {"predictions": [...]}; GET /metrics -> Prometheus text with
DCGM_FI_DEV_GPU_UTIL (percent). A control port takes POST /scenario (JSON: key, t0 as
time.monotonic() of the measured start, duration) and answers GET /stats with every predict's
arrival time per replica and the calls still in flight.

What must always hold: answers on one connection leave in request order; a call queued behind
busy slots is dropped when its connection closes (the client gave up), one already executing
runs to its end, as on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from collections import deque
from collections.abc import Callable

import orjson

from benchmarks.fleet_scenarios import BusyMeter, Scenario, build
from benchmarks.protos import REST_PREDICT_ANSWER, REST_STATUS_ANSWER

Respond = Callable[[bytes], None]


def _response(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


PREDICT = _response("200 OK", REST_PREDICT_ANSWER)
STATUS = _response("200 OK", REST_STATUS_ANSWER)
NOT_FOUND = _response("404 Not Found", b'{"error": "not found"}')


class Replica:
    """One replica's slots, queue, utilisation and the arrivals of the current run."""

    def __init__(self, index: int, loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.loop = loop
        self.scenario = build("equal", 10.0)
        self.t0 = time.monotonic()
        self.executing = 0
        self.queue: deque[tuple[Respond, Connection]] = deque()
        self.meter = BusyMeter()
        self.arrivals: list[float] = []

    def reset(self, scenario: Scenario, t0: float) -> None:
        self.scenario, self.t0 = scenario, t0
        self.arrivals = []

    @property
    def in_flight(self) -> int:
        return self.executing + len(self.queue)

    def submit(self, respond: Respond, conn: Connection) -> None:
        now = time.monotonic()
        self.arrivals.append(now - self.t0)
        self.queue.append((respond, conn))
        self._start(now)

    def _start(self, now: float) -> None:
        sc = self.scenario
        while self.queue and self.executing < sc.slots:
            respond, conn = self.queue.popleft()
            if conn.closed:
                continue
            t = now - self.t0
            service = sc.service_s(self.index, t, self.executing + 1)
            end = sc.finish_s(self.index, t, service) + self.t0
            self.executing += 1
            self.loop.call_later(max(0.0, end - now), self._done, respond)
        self.meter.set(now, min(self.executing, sc.slots) / sc.slots)

    def _done(self, respond: Respond) -> None:
        self.executing -= 1
        respond(PREDICT)
        self._start(time.monotonic())

    def drop_queued(self, conn: Connection) -> None:
        if any(c is conn for _, c in self.queue):
            self.queue = deque((r, c) for r, c in self.queue if c is not conn)
            self.meter.set(time.monotonic(), min(self.executing, self.scenario.slots)
                           / self.scenario.slots)

    def metrics(self) -> bytes:
        util = self.meter.read(time.monotonic()) * 100.0
        body = (f"# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
                f'DCGM_FI_DEV_GPU_UTIL{{gpu="0",replica="r{self.index}"}} {util:.1f}\n').encode()
        return _response("200 OK", body, b"text/plain; version=0.0.4")


Handler = Callable[["Connection", str, str, bytes, Respond], None]


class Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive server connection; the handler answers each request through its
    `respond` callback, at once or later, and answers leave in request order."""

    def __init__(self, handle: Handler, on_close: Callable[[Connection], None] | None = None
                 ) -> None:
        self._handle = handle
        self._on_close = on_close
        self._buf = bytearray()
        self._pending: deque[list[bytes]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._on_close is not None:
            self._on_close(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4:end + 4 + length])
            del buf[:end + 4 + length]
            method, path = (head.split(" ", 2) + ["", ""])[:2]
            slot: list[bytes] = []
            self._pending.append(slot)

            def respond(answer: bytes, slot: list[bytes] = slot) -> None:
                slot.append(answer)
                self._flush()

            self._handle(self, method, path, body, respond)

    def _flush(self) -> None:
        out = []
        while self._pending and self._pending[0]:
            out.append(self._pending.popleft()[0])
        if out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(out))


class Fleet:
    """The replicas and the control API."""

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop) -> None:
        self.replicas = [Replica(i, loop) for i in range(count)]

    def handler(self, replica: Replica) -> Handler:
        def handle(conn: Connection, method: str, path: str, body: bytes,
                   respond: Respond) -> None:
            p = path.lower()
            if method == "POST" and p.startswith("/v1/models/") and p.endswith(":predict"):
                replica.submit(respond, conn)
            elif method == "GET" and p.startswith("/v1/models/") and ":" not in p:
                respond(STATUS)
            elif method == "GET" and p.startswith("/metrics"):
                respond(replica.metrics())
            else:
                respond(NOT_FOUND)
        return handle

    def control(self, conn: Connection, method: str, path: str, body: bytes,
                respond: Respond) -> None:
        if method == "POST" and path == "/scenario":
            req = orjson.loads(body)
            sc = build(req["key"], float(req["duration"]))
            for r in self.replicas:
                r.reset(sc, float(req["t0"]))
            respond(_response("200 OK", b"{}"))
        elif method == "GET" and path == "/stats":
            data = {"arrivals": [[round(t, 4) for t in r.arrivals] for r in self.replicas],
                    "in_flight": [r.in_flight for r in self.replicas]}
            respond(_response("200 OK", orjson.dumps(data)))
        else:
            respond(NOT_FOUND)


async def serve(ports: list[int], control_port: int) -> None:
    loop = asyncio.get_running_loop()
    fleet = Fleet(len(ports), loop)
    servers = []
    for replica, port in zip(fleet.replicas, ports, strict=True):
        servers.append(await loop.create_server(
            functools.partial(Connection, fleet.handler(replica), replica.drop_queued),
            "127.0.0.1", port, backlog=4096))
    servers.append(await loop.create_server(lambda: Connection(fleet.control), "127.0.0.1",
                                            control_port))
    await asyncio.Event().wait()  # until SIGTERM; the servers are held by `servers`


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet_replica")
    p.add_argument("--ports", required=True, help="comma-separated REST ports, one per replica")
    p.add_argument("--control", type=int, required=True)
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(serve([int(x) for x in args.ports.split(",")], args.control))
    return 0


if __name__ == "__main__":
    sys.exit(main())
