"""The registry's change feed as seen by the other services: an in-memory mirror of a NATS KV bucket.

The registry writes every committed change to a KV bucket (through its outbox). A mirror loads the
bucket's current values on start, then follows every put and delete, so a restarted service resyncs and a
running one learns of a change within milliseconds. A key missing from the mirror is read from the bucket
directly before it is declared absent, so a value written a moment ago is never reported missing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

import nats.js.errors
import structlog
from google.protobuf.message import Message
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from kairos.core.tasks import cancel_and_wait, spawn

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=Message)
ChangeCallback = Callable[[str, "Message | None"], None]


class KvMirror(Generic[M]):
    """Mirrors `bucket` into a dict of decoded `message_type` values; calls `on_change(key, value|None)`."""

    def __init__(self, kv: KeyValue, message_type: type[M], on_change: ChangeCallback | None = None) -> None:
        self._kv = kv
        self._type = message_type
        self._on_change = on_change
        self._values: dict[str, M] = {}
        self._task: asyncio.Task | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._changed = asyncio.Condition()
        self.loaded = asyncio.Event()

    def __len__(self) -> int:
        return len(self._values)

    def values(self) -> list[M]:
        return list(self._values.values())

    def cached(self, key: str) -> M | None:
        return self._values.get(key)

    async def get(self, key: str) -> M | None:
        value = self._values.get(key)
        if value is not None:
            return value
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None:
            return None
        value = self._type.FromString(entry.value)
        self._values.setdefault(key, value)
        return value

    async def wait_until(self, key: str, predicate: Callable[[M | None], bool]) -> M | None:
        """Waits until the mirrored value of `key` satisfies `predicate` (bound it with asyncio.timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self._values.get(key)))
            return self._values.get(key)

    async def start(self) -> None:
        """Starts following the bucket and returns once its current contents are loaded."""
        self._watcher = await self._kv.watchall()
        self._task = spawn(self._follow(self._watcher), f"kv-mirror-{self._type.__name__}")
        await self.loaded.wait()

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        await cancel_and_wait(self._task)

    def _apply(self, key: str, value: M | None) -> None:
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = value
        if self._on_change is not None:
            try:
                self._on_change(key, value)
            except Exception:
                log.exception("change callback failed", key=key)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                self.loaded.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                self._apply(entry.key, None)
            else:
                self._apply(entry.key, self._type.FromString(entry.value))
            async with self._changed:
                self._changed.notify_all()
