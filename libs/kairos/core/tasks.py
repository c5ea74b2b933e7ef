"""Background tasks that never die silently: a crash is logged with its traceback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task crashed", task=task.get_name(), exc_info=task.exception())


def spawn(coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
    task = asyncio.create_task(coroutine, name=name)
    task.add_done_callback(_report)
    return task


async def cancel_and_wait(*tasks: asyncio.Task | None) -> None:
    """Cancels the tasks (None is skipped) and waits until each has ended; their exceptions are not raised."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Waits until `event` is set or `timeout_s` has passed; whether it was set (a loop's stop or wake-up)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
    return event.is_set()
