"""Helpers for the routing integration tests (test_routing_*.py); this module holds no tests.

Traffic is sent by a small pool of threads, each on its own keep-alive ``http.client`` connection
to the gateway, so a few thousand calls take seconds on a two-core machine. Which version served a
call is read from the answer itself (half_plus_two v1 answers 0.5 x + 2, v2 answers 0.5 x + 3),
and cross-checked against the ``x-infergate-version`` header.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

PREDICT = "/v1/models/half_plus_two:predict"
BODY = json.dumps({"instances": [1.0]}).encode()
# The answer to x = 1.0 tells the version apart: v1 = 0.5 + 2, v2 = 0.5 + 3.
VERSION_OF_ANSWER = {2.5: 1, 3.5: 2}


@dataclass(frozen=True)
class Req:
    path: str = PREDICT
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = BODY
    method: str = "POST"


@dataclass
class Res:
    status: int  # -1: the call failed below HTTP (connection error)
    headers: dict[str, str]
    body: bytes
    started: float = 0.0
    ended: float = 0.0
    error: str = ""

    @property
    def replica(self) -> str:
        return self.headers.get("x-infergate-replica", "")

    @property
    def version(self) -> int | None:
        """The version that answered, read from the prediction (and checked against the header)."""
        if self.status != 200:
            return None
        data = json.loads(self.body)
        value = (data.get("predictions") or data.get("results"))[0]
        version = VERSION_OF_ANSWER[float(value)]
        header = self.headers.get("x-infergate-version")
        assert header == str(version), f"answer says v{version}, header says {header!r}"
        return version


class _Conn:
    """One keep-alive connection; reopened after a failure."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn: http.client.HTTPConnection | None = None

    def send(self, req: Req) -> Res:
        t0 = time.monotonic()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            headers = {"Content-Type": "application/json", **req.headers}
            self.conn.request(req.method, req.path, body=req.body, headers=headers)
            resp = self.conn.getresponse()
            body = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            return Res(resp.status, hdrs, body, t0, time.monotonic())
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Res(-1, {}, b"", t0, time.monotonic(), repr(exc))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _hostport(base_url: str) -> tuple[str, int]:
    host, _, port = base_url.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


def fire(base_url: str, reqs: Sequence[Req], concurrency: int = 8) -> list[Res]:
    """Send every request (each exactly once) with ``concurrency`` threads; results in order."""
    host, port = _hostport(base_url)
    out: list[Res | None] = [None] * len(reqs)
    lock = threading.Lock()
    next_i = [0]

    def worker() -> None:
        conn = _Conn(host, port)
        try:
            while True:
                with lock:
                    i = next_i[0]
                    next_i[0] += 1
                if i >= len(reqs):
                    return
                out[i] = conn.send(reqs[i])
        finally:
            conn.close()

    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(min(concurrency, len(reqs)))]:
            f.result()
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


class Background:
    """Traffic that runs until stopped (at most ``limit`` calls), every result kept with its times."""

    def __init__(self, base_url: str, make: Callable[[int], Req], concurrency: int = 4,
                 limit: int = 6000) -> None:
        self.host, self.port = _hostport(base_url)
        self.make = make
        self.limit = limit
        self.results: list[Res] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._n = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def __enter__(self) -> Background:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self) -> None:
        conn = _Conn(self.host, self.port)
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self._n >= self.limit:
                        return
                    i = self._n
                    self._n += 1
                res = conn.send(self.make(i))
                with self._lock:
                    self.results.append(res)
        finally:
            conn.close()

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_for(self, n: int, timeout: float = 60.0) -> None:
        """Block until ``n`` more results arrived than when called."""
        target = self.count() + n
        end = time.monotonic() + timeout
        while self.count() < target:
            assert time.monotonic() < end, f"background traffic stalled at {self.count()} calls"
            assert self._n < self.limit, "background traffic hit its call limit"
            time.sleep(0.01)

    def between(self, t0: float, t1: float) -> list[Res]:
        """Results of calls that started after t0 and ended before t1."""
        with self._lock:
            return [r for r in self.results if r.started >= t0 and r.ended <= t1]


def version_counts(results: Sequence[Res]) -> Counter[int | None]:
    return Counter(r.version for r in results)


def failures(results: Sequence[Res]) -> list[str]:
    return [f"{r.status} {r.error or r.body[:200]!r}" for r in results if r.status != 200]


def within_sigmas(k: int, n: int, p: float, sigmas: float = 4.0) -> tuple[bool, str]:
    """Whether k successes in n trials fit Binomial(n, p) within ``sigmas`` standard deviations."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    ok = abs(k - mean) <= sigmas * sd
    return ok, f"{k}/{n} = {k / n:.3f}, expected {p:.3f} +- {sigmas * sd / n:.3f} ({sigmas:g} sigma)"


_SAMPLE = re.compile(r'^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0.0 when none)."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group("name") != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group("labels") or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group("value"))
    return total


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns a truthy value; fail naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < end, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)
