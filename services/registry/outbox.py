"""Transactional outbox: changes are written to the `outbox` table in the same transaction as the data,
then relayed to the NATS KV change-feed buckets in commit order. A registry that dies between commit and
publish relays the leftover rows when it starts again, so no committed change is lost.

Writers that finish at the same time share one flush: a flush that starts after a writer's commit covers it, so
`flush_soon` joins the next flush to start instead of running one per writer. Within a batch only the last
change of each key is published (a KV bucket keeps only the last value anyway), all keys at once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue
from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from kairos.core.tasks import cancel_and_wait, spawn, wait_event
from kairos.registry.models import OutboxRow
from kairos.registry.transactions import Transactions

log = structlog.get_logger(__name__)

TRIGGERS = "triggers"
WEBHOOKS = "webhooks"
API_KEYS = "api_keys"
WORKSPACES = "workspaces"
BATCH = 500


def stage(session: AsyncSession | Session, bucket: str, key: str, value: bytes | None) -> None:
    """Adds a change to the caller's transaction; it reaches the feed after the transaction commits."""
    session.add(OutboxRow(bucket=bucket, key=key, value=value, create_time=datetime.now(UTC)))


class OutboxRelay:
    """Publishes outbox rows to their KV buckets, oldest first, and deletes them once published."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        buckets: dict[str, KeyValue],
        transactions: Transactions | None = None,
    ) -> None:
        self._sessions = sessions
        self._buckets = buckets
        self._transactions = transactions
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        # nats-py can swallow a cancellation (as in the scheduler), so the loop also ends on this event
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._next_flush: asyncio.Future[int] | None = None

    async def _transaction(self, work):
        if self._transactions is not None:
            return await self._transactions.run(work)
        async with self._sessions() as session:
            return await session.run_sync(work)

    async def _publish(self, bucket: str, key: str, value: bytes | None) -> None:
        kv = self._buckets[bucket]
        if value is None:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await kv.delete(key)
        else:
            await kv.put(key, value)

    async def flush(self) -> int:
        """Relays every pending row; returns how many were published."""
        async with self._lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> int:
        published = 0
        while True:
            rows = await self._transaction(_pending_rows)
            if not rows:
                return published
            latest = {(bucket, key): value for _, bucket, key, value in rows}
            await asyncio.gather(*(self._publish(bucket, key, value) for (bucket, key), value in latest.items()))
            await self._transaction(functools.partial(_delete_through, last_id=rows[-1][0]))
            published += len(rows)

    def _join_next_flush(self) -> asyncio.Future[int]:
        """The next flush to start, which covers every commit made before this call."""
        if self._next_flush is None:
            self._next_flush = asyncio.get_running_loop().create_future()
            self._next_flush.add_done_callback(lambda done: done.cancelled() or done.exception())
            spawn(self._start_next_flush(self._next_flush), "outbox-flush")
        return self._next_flush

    async def _start_next_flush(self, future: asyncio.Future[int]) -> None:
        async with self._lock:
            self._next_flush = None
            try:
                future.set_result(await self._flush_locked())
            except Exception as error:
                future.set_exception(error)

    async def flush_soon(self, timeout: float = 2.0) -> None:
        """Best-effort flush after a write, so callers read their own change on the feed. A failure is
        retried by the background loop; the write itself is already committed."""
        try:
            await asyncio.wait_for(asyncio.shield(self._join_next_flush()), timeout)
        except (TimeoutError, nats.errors.Error, OSError) as error:
            log.warning("change feed publish deferred", error=str(error))
            self._wakeup.set()

    async def start(self) -> None:
        await self.flush_soon(timeout=10.0)
        self._task = spawn(self._run(), "outbox-relay")

    async def stop(self) -> None:
        """Ends the relay loop; rows it has not published stay in the outbox for the next start."""
        self._stopping.set()
        self._wakeup.set()
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await wait_event(self._wakeup, 5.0)
            self._wakeup.clear()
            if self._stopping.is_set():
                return
            try:
                await self.flush()
            except Exception as error:
                log.warning("outbox relay failed; will retry", error=str(error))


PENDING_ROWS = (
    select(OutboxRow.id, OutboxRow.bucket, OutboxRow.key, OutboxRow.value).order_by(OutboxRow.id).limit(BATCH)
)
DELETE_THROUGH = delete(OutboxRow.__table__).where(OutboxRow.id <= bindparam("last_id"))


def _pending_rows(session: Session) -> list[tuple[int, str, str, bytes | None]]:
    return [tuple(row) for row in session.connection().execute(PENDING_ROWS)]


def _delete_through(session: Session, last_id: int) -> None:
    session.connection().execute(DELETE_THROUGH, {"last_id": last_id})
    session.commit()
