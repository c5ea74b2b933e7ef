"""Transactional outbox: changes are written to the `outbox` table in the same transaction as the data,
then relayed to the NATS KV change-feed buckets in commit order. A registry that dies between commit and
publish relays the leftover rows when it starts again, so no committed change is lost."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kairos.core.tasks import spawn
from kairos.registry.models import OutboxRow

log = structlog.get_logger(__name__)

TRIGGERS = "triggers"
WEBHOOKS = "webhooks"
API_KEYS = "api_keys"
BATCH = 500


def stage(session: AsyncSession, bucket: str, key: str, value: bytes | None) -> None:
    """Adds a change to the caller's transaction; it reaches the feed after the transaction commits."""
    session.add(OutboxRow(bucket=bucket, key=key, value=value, create_time=datetime.now(UTC)))


class OutboxRelay:
    """Publishes outbox rows to their KV buckets, oldest first, and deletes them once published."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], buckets: dict[str, KeyValue]) -> None:
        self._sessions = sessions
        self._buckets = buckets
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def flush(self) -> int:
        """Relays every pending row; returns how many were published."""
        published = 0
        async with self._lock:
            while True:
                async with self._sessions() as session:
                    rows = (await session.scalars(select(OutboxRow).order_by(OutboxRow.id).limit(BATCH))).all()
                    if not rows:
                        return published
                    for row in rows:
                        bucket = self._buckets[row.bucket]
                        if row.value is None:
                            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                                await bucket.delete(row.key)
                        else:
                            await bucket.put(row.key, row.value)
                    await session.execute(delete(OutboxRow).where(OutboxRow.id <= rows[-1].id))
                    await session.commit()
                    published += len(rows)

    async def flush_soon(self, timeout: float = 2.0) -> None:
        """Best-effort flush after a write, so callers read their own change on the feed. A failure is
        retried by the background loop; the write itself is already committed."""
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except (TimeoutError, nats.errors.Error, OSError) as error:
            log.warning("change feed publish deferred", error=str(error))
            self._wakeup.set()

    async def start(self) -> None:
        await self.flush_soon(timeout=10.0)
        self._task = spawn(self._run(), "outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=5.0)
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception as error:
                log.warning("outbox relay failed; will retry", error=str(error))
