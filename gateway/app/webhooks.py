"""JSON webhooks for scale and rollout transitions: fire and forget, retried with backoff.

What must always hold: a webhook never blocks or fails traffic; a receiver that is down gets the
event once it is back, as long as that happens within the retry schedule (about 30 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from gateway.config import Webhook
from gateway.core.tasks import spawn

log = logging.getLogger("infergate.webhooks")
TRIES = 6


class Webhooks:
    def __init__(self, hooks: Callable[[], Sequence[Webhook]],
                 session: Callable[[], aiohttp.ClientSession]) -> None:
        self._hooks = hooks
        self._session = session

    def notify(self, payload: dict[str, Any]) -> None:
        for hook in self._hooks():
            spawn(self._post(hook.url, hook.timeout_s, payload), "webhook")

    async def _post(self, url: str, timeout: float, payload: dict[str, Any]) -> None:
        """Tries at 0, 1, 3, 7, 15 and 31 s: a receiver back within about 30 s gets the event."""
        delay = 1.0
        for attempt in range(TRIES):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                async with self._session().post(
                        url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    if resp.status < 500:
                        return
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.debug("webhook %s attempt %d failed: %r", url, attempt + 1, exc)
        log.warning("webhook %s gave up after %d attempts", url, TRIES)
