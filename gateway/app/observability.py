"""Tracing and payload logging, built from the config the gateway starts with and wired into
the ingresses (the server span, the payload record) and the dispatcher (a span per try).

What must always hold: with neither `tracing` nor `payload_log` configured nothing is wired and
nothing runs (ingresses and dispatcher keep their plain paths); a `tracing` section the process
cannot honour (the `tracing` extra not installed) is logged as an error and the gateway serves
without traces; both settings apply from the start (a reload that changes them is refused:
see reload_rules); the one background task writes the payload log and, when cancelled at close,
writes what is queued and sends the spans still waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random

from gateway.config import GatewayConfig
from gateway.core.call import Forwarder
from gateway.core.metrics import Metrics
from gateway.core.tasks import spawn
from gateway.observe import CallObserver, PayloadLog, Tracer, TracingUnavailable, log_path
from gateway.routing.dispatch import Dispatcher
from gateway.transport.ingress import Ingress, IngressHost

log = logging.getLogger("infergate.observe")


class Observability:
    def __init__(self, cfg: GatewayConfig, metrics: Metrics, dispatcher: Dispatcher,
                 workers_folder: str | None = None) -> None:
        self.metrics = metrics
        self.tracer: Tracer | None = None
        self.payload: PayloadLog | None = None
        if cfg.tracing is not None:
            try:
                self.tracer = Tracer(cfg.tracing)
            except TracingUnavailable as exc:
                log.error("%s; serving without traces", exc)
        if self.tracer is not None:
            dispatcher.trace(self.tracer)
        if cfg.payload_log is not None:
            # --workers N: one file per process (rotation cannot be shared).
            self.payload = PayloadLog(cfg.payload_log, metrics, random.Random(),
                                      log_path(cfg.payload_log, workers_folder is not None))
        self.observer = (CallObserver(self.tracer, self.payload)
                         if self.tracer is not None or self.payload is not None else None)

    def ingress(self, host: IngressHost, protocol: str, fwd: Forwarder) -> Ingress:
        """One protocol's ingress, observed when tracing or payload logging is on."""
        return Ingress(host, protocol, fwd, self.metrics, self.observer)

    def start(self) -> list[asyncio.Task[None]]:
        """The background task, when there is something to run (none when both are off)."""
        return [] if self.observer is None else [spawn(self._run(), "observe")]

    async def _run(self) -> None:
        try:
            if self.payload is not None:
                await self.payload.run()
            else:
                await asyncio.Event().wait()  # only there to flush the spans at close
        finally:
            if self.tracer is not None:
                await asyncio.to_thread(self.tracer.shutdown)
