"""Payload logging: a sample of the calls, request and answer, written as JSON lines off the
request path (format: `gateway.observe.records`; file and rotation: `gateway.observe.logfile`).

What must always hold: a call never waits for the log. The event loop only samples and puts a
`Sample` (references and a copy of the headers) in a bounded queue; when the queue is full the
record is dropped and counted (infergate_payload_log_dropped_total), never awaited. One
background task takes batches from the queue and encodes and writes them in a thread. Only
inference calls (predict, classify, regress, multi_inference) of a known model are logged.
On cancellation (the gateway closing) the task writes what is queued, then closes the file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from pathlib import Path

from gateway.config import PayloadLog as PayloadLogConfig
from gateway.core.call import Answer, Call
from gateway.core.errors import GatewayError
from gateway.core.metrics import Metrics
from gateway.observe.logfile import RotatingLog
from gateway.observe.records import Sample, encode

log = logging.getLogger("infergate.payload")

LOGGED = frozenset({"predict", "classify", "regress", "multi_inference"})
BATCH = 256  # records per write: one thread hop and one flush for up to this many


def log_path(cfg: PayloadLogConfig, per_process: bool) -> Path:
    """The file this process writes: `path`, or with --workers N one per worker process
    (payload.jsonl -> payload-PID.jsonl), since rotation cannot be shared."""
    path = Path(cfg.path)
    return path.with_name(f"{path.stem}-{os.getpid()}{path.suffix}") if per_process else path


class PayloadLog:
    def __init__(self, cfg: PayloadLogConfig, metrics: Metrics, rng: random.Random,
                 path: Path | None = None) -> None:
        self.cfg = cfg
        self.rng = rng
        self.models = frozenset(cfg.models)
        self.redact = frozenset(cfg.redact)
        self.file = RotatingLog(path or Path(cfg.path), int(cfg.rotate_mb * 1024 * 1024), cfg.keep)
        self.queue: asyncio.Queue[Sample] = asyncio.Queue(cfg.queue)
        self.logged = metrics.payload_logged
        self.dropped = metrics.payload_dropped
        self._write_failed_at = 0.0

    def record(self, call: Call, result: Answer | GatewayError, t0: float) -> None:
        """On the event loop, once per answered call: sample it and queue it, or drop it."""
        model = call.model
        if model is None or call.method not in LOGGED or (self.models and model not in self.models):
            return
        if self.rng.random() >= self.cfg.sample_ratio:
            return
        try:
            self.queue.put_nowait(Sample(time.time(), time.monotonic() - t0, call,
                                         dict(call.headers), result))
        except asyncio.QueueFull:
            self.dropped.inc()

    async def run(self) -> None:
        """The writer task: batches from the queue to the file, in a thread."""
        try:
            while True:
                batch = [await self.queue.get()]
                while len(batch) < BATCH and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                await asyncio.to_thread(self.write, batch)
        except asyncio.CancelledError:
            rest = []
            while not self.queue.empty():
                rest.append(self.queue.get_nowait())
            await asyncio.to_thread(self._last, rest)
            raise

    def _last(self, batch: list[Sample]) -> None:
        if batch:
            self.write(batch)
        self.file.close()

    def write(self, batch: list[Sample]) -> None:
        """In the writer's thread: encode, append, flush (and rotate when the file is full)."""
        cfg = self.cfg
        delay = cfg.slow_write_ms / 1000.0
        try:
            for s in batch:
                if delay:
                    time.sleep(delay)
                self.file.write(encode(s, cfg.max_bytes, self.redact))
            self.file.flush()
        except OSError as exc:
            self.dropped.inc(len(batch))
            now = time.monotonic()
            if now - self._write_failed_at > 60.0:  # a full disk: say so once a minute
                self._write_failed_at = now
                log.error("payload log %s: write failed (%s); records are dropped", self.file.path,
                          exc)
            return
        self.logged.inc(len(batch))
