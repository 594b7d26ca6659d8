"""Steady client load for fault drills: a closed loop of worker threads, every call recorded.

Each worker owns one client (a keep-alive http.client connection, or a stub over a shared gRPC
channel) and sends calls back to back until the load is stopped or its call budget is spent.
Every call is a `Sample` (start, latency, ok, what went wrong). A drill marks moments on the
load's clock (`mark("fault")`, `mark("recovered")`); the report splits the samples into phases at
those marks by start time and gives calls, failures and latency percentiles per phase.

What must always hold: a call counts as good only when the answer is the right one (status and
predicted values checked), and nothing a worker raises is lost: it is a failed sample.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# One call: (ok, what went wrong when not ok). A client is made once per worker thread.
Send = Callable[[int], tuple[bool, str]]
ClientFactory = Callable[[], Send]
PREDICT_PATH = "/v1/models/half_plus_two:predict"


def half_plus_three(x: float) -> float:
    """What version 2 of the test model answers (the latest version, served by default)."""
    return 0.5 * x + 3.0


@dataclass(frozen=True, slots=True)
class Sample:
    start: float
    latency: float
    ok: bool
    what: str = ""


@dataclass(frozen=True)
class Phase:
    name: str
    calls: int
    failures: int
    p50_ms: float | None
    p99_ms: float | None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Report:
    drill: str
    samples: list[Sample]
    marks: list[tuple[str, float]]
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return len(self.samples)

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]

    def phases(self) -> list[Phase]:
        """Samples split by start time at the marks: 'before', then one phase per mark."""
        bounds = [("before", -math.inf), *self.marks, ("end", math.inf)]
        out = []
        for (name, lo), (_, hi) in zip(bounds, bounds[1:], strict=False):
            part = [s for s in self.samples if lo <= s.start < hi]
            ms = [s.latency * 1000.0 for s in part if s.ok]
            out.append(Phase(name, len(part), sum(1 for s in part if not s.ok),
                             percentile(ms, 50), percentile(ms, 99)))
        return out

    def summary(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        parts = [f"{p.name}: {p.calls} calls, {p.failures} failed, p50 {fmt(p.p50_ms)} ms, "
                 f"p99 {fmt(p.p99_ms)} ms" for p in self.phases()]
        notes = "".join(f"; {k}={v}" for k, v in self.notes.items())
        span = (self.samples[-1].start + self.samples[-1].latency - self.samples[0].start
                if self.samples else 0.0)
        return (f"[drill] {self.drill}: {self.calls} calls in {span:.1f} s, "
                f"{len(self.failures)} failed | "
                + " | ".join(parts) + notes)

    def failure_text(self, limit: int = 10) -> str:
        kinds: dict[str, int] = {}
        for s in self.failures:
            kinds[s.what] = kinds.get(s.what, 0) + 1
        return "; ".join(f"{n} x {w}" for w, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:limit])

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases() if p.name == name)


class Load:
    """`concurrency` workers, `max_calls` at most, until `stop()`.

    With `rate` (calls per second over all workers) call n is not sent before start + n / rate:
    a steady offered load that leaves CPU to the processes under test on a small machine. A
    worker still waits for its answer before its next call, so a slow fleet lowers the rate
    rather than piling up calls (closed loop)."""

    def __init__(self, drill: str, client: ClientFactory, *, concurrency: int = 16,
                 max_calls: int = 2000, rate: float | None = None) -> None:
        self.drill = drill
        self._client = client
        self._concurrency = concurrency
        self._max_calls = max_calls
        self._rate = rate
        self._t0 = 0.0
        self._lock = threading.Lock()
        self._issued = 0
        self._samples: list[Sample] = []
        self._marks: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        self._t0 = time.monotonic()
        for i in range(self._concurrency):
            t = threading.Thread(target=self._work, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _take(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._issued >= self._max_calls:
                return None
            self._issued += 1
            n = self._issued
        if self._rate is not None:
            wait = self._t0 + n / self._rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        return n

    def _work(self) -> None:
        try:
            send = self._client()
        except Exception as exc:  # a worker that cannot even build its client is a failed call
            with self._lock:
                self._samples.append(Sample(time.monotonic(), 0.0, False, f"client: {exc!r}"))
            return
        while (n := self._take()) is not None:
            t0 = time.monotonic()
            try:
                ok, what = send(n)
            except Exception as exc:  # recorded as a failed sample, never swallowed
                ok, what = False, f"{type(exc).__name__}: {str(exc)[:80]}"
            sample = Sample(t0, time.monotonic() - t0, ok, what)
            with self._lock:
                self._samples.append(sample)

    @property
    def done(self) -> int:
        with self._lock:
            return len(self._samples)

    def wait_done(self, n: int, timeout: float = 60.0) -> None:
        """Block until `n` calls have finished (or the load ended); fail after `timeout`."""
        end = time.monotonic() + timeout
        while self.done < n and any(t.is_alive() for t in self._threads):
            if time.monotonic() > end:
                raise TimeoutError(f"{self.drill}: only {self.done} of {n} calls done in {timeout} s")
            time.sleep(0.02)

    def wait_more(self, n: int, timeout: float = 60.0) -> None:
        self.wait_done(self.done + n, timeout)

    def mark(self, name: str) -> float:
        at = time.monotonic()
        with self._lock:
            self._marks.append((name, at))
        return at

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 60.0) -> Report:
        """Wait for every worker (the call budget spent or stop() called); the report."""
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            self.stop()
            raise TimeoutError(f"{self.drill}: workers still busy after {timeout} s: {alive}")
        with self._lock:
            return Report(self.drill, sorted(self._samples, key=lambda s: s.start),
                          list(self._marks))


# ---------------------------------------------------------------- clients


def repeating(n: int) -> float:
    """The input of call n: 997 distinct values, so a cache warms up and then hits."""
    return float(n % 997)


def rest_predict_client(host: str, port: int, *, timeout: float = 30.0, backoff_s: float = 0.05,
                        path: str = PREDICT_PATH,
                        expect: Callable[[float], float] = half_plus_three,
                        value: Callable[[int], float] = repeating) -> ClientFactory:
    """A keep-alive REST client per worker: POST {"instances": [value(n)]}, check the prediction.

    A connection that breaks is closed and opened again for the next call. After a failed call
    the worker waits `backoff_s`, as a real client would."""

    def factory() -> Send:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)

        def send(n: int) -> tuple[bool, str]:
            x = value(n)
            body = json.dumps({"instances": [x]}).encode()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                time.sleep(backoff_s)
                return False, f"connection: {type(exc).__name__}"
            if resp.status != 200:
                time.sleep(backoff_s)
                return False, f"HTTP {resp.status}: {data[:120]!r}"
            got = json.loads(data).get("predictions")
            if got != [expect(x)]:
                return False, f"wrong answer {got!r} for {x}"
            return True, ""

        return send

    return factory


def grpc_predict_client(channel: Any, *, timeout: float = 30.0, backoff_s: float = 0.05,
                        expect: Callable[[float], float] = half_plus_three) -> ClientFactory:
    """Official TF Serving stubs over one shared channel: Predict {"x": [x]}, check "y".
    After a failed call the worker waits `backoff_s`, as a real client would."""
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    def factory() -> Send:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def send(n: int) -> tuple[bool, str]:
            x = float(n % 997)
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "half_plus_two"
            req.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, float_val=[x],
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
            try:
                resp = stub.Predict(req, timeout=timeout)
            except grpc.RpcError as err:
                time.sleep(backoff_s)
                return False, f"gRPC {err.code().name}: {(err.details() or '')[:100]}"
            got = list(resp.outputs["y"].float_val)
            if got != [expect(x)]:
                return False, f"wrong answer {got!r} for {x}"
            return True, ""

        return send

    return factory
