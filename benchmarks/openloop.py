"""An open-loop HTTP/1.1 load generator: calls leave on a fixed schedule (Poisson arrivals at a
set rate), whether or not earlier ones have been answered.

A closed-loop tool (wrk) slows down when the target does, so a stalled replica hides in a lower
request rate; here the offered load stays fixed and a call's latency is measured from the
moment it was due to leave, so time spent waiting for a free connection counts too (no
coordinated omission: Tene, "How NOT to measure latency", 2015).

What must always hold: only 127.0.0.1 is targeted; the run is bounded in calls (the schedule)
and in time (every call gives up after `timeout_s`); at most `max_conns` connections are open.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass


def poisson_schedule(rate: float, start_s: float, end_s: float, seed: int) -> list[float]:
    """Departure times in [start_s, end_s) of a Poisson process of `rate` per second."""
    rng = random.Random(seed)
    out: list[float] = []
    t = start_s + rng.expovariate(rate)
    while t < end_s:
        out.append(t)
        t += rng.expovariate(rate)
    return out


@dataclass(slots=True)
class Outcome:
    due_s: float  # scheduled departure, seconds from t0
    latency_s: float  # from due to the last byte of the answer (or to giving up)
    status: int  # HTTP status; 0 for a timeout or a broken connection


class _ClientConnection(asyncio.Protocol):
    """One keep-alive connection carrying one call at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.buf = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed by the server"))

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf.clear()
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        status = _complete(self.buf)
        if status is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _complete(buf: bytearray) -> int | None:
    """The status of a complete answer in `buf`, or None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    body = buf[end + 4:]
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            return status if len(body) >= int(value) else None
        if name == "transfer-encoding" and "chunked" in value.lower():
            return status if body.endswith(b"0\r\n\r\n") else None
    return status


async def run(port: int, path: str, body: bytes, schedule: list[float], t0: float,
              timeout_s: float = 2.0, max_conns: int = 1024) -> list[Outcome]:
    """Send one POST per scheduled time (seconds relative to `t0`, a time.monotonic() value)
    to 127.0.0.1:`port`; return one Outcome per call."""
    loop = asyncio.get_running_loop()
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
               f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    idle: list[_ClientConnection] = []
    slots = asyncio.Semaphore(max_conns)
    outcomes: list[Outcome] = []

    async def one(due: float) -> None:
        deadline = t0 + due + timeout_s
        status = 0
        conn: _ClientConnection | None = None
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                async with slots:
                    while idle:
                        conn = idle.pop()
                        if not conn.closed:
                            break
                        conn = None
                    if conn is None:
                        _, conn = await loop.create_connection(_ClientConnection, "127.0.0.1",
                                                               port)
                    status = await conn.send(request)
                    idle.append(conn)
        except (TimeoutError, OSError, ConnectionError):
            status = 0
            if conn is not None:
                conn.close()
        outcomes.append(Outcome(due, time.monotonic() - (t0 + due), status))

    async with asyncio.TaskGroup() as group:  # holds every call's task until it is done
        for due in schedule:
            delay = t0 + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            group.create_task(one(due))
    for conn in idle:
        conn.close()
    return outcomes
