"""The one way to start a background task.

`asyncio.create_task` keeps only a weak reference to its task and a failure in it is reported,
if at all, when the task is garbage collected. `spawn` keeps a strong reference until the task
ends, names it, and logs its death unless it was cancelled. Every background task of the gateway
goes through here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("infergate.tasks")
T = TypeVar("T")

_live: set[asyncio.Task[Any]] = set()


def _on_done(task: asyncio.Task[Any]) -> None:
    _live.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %s died: %r", task.get_name(), exc, exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """Start `coro` as a named background task that is referenced until it ends."""
    task = asyncio.create_task(coro, name=name)  # noqa: TID251
    _live.add(task)
    task.add_done_callback(_on_done)
    return task


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait for them to finish."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            await t
        except asyncio.CancelledError:
            continue
        except Exception as exc:  # already logged by _on_done; keep shutting down
            log.debug("task %s ended with %r during shutdown", t.get_name(), exc)
