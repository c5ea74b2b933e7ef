"""Group commit for the run history: write operations from many concurrent runs share one transaction.

Each operation is a blocking `(session) -> result` function on a synchronous SQLAlchemy session. One
background writer takes everything queued, runs it in a single transaction and only then resolves each
caller's future, so a caller that got its result knows the write is committed (the fire is acknowledged only
after that). While a batch commits the next one fills up, so the batch size follows the load and an idle
store adds no delay. Operations must be repeatable: if a batch fails, each of its operations runs again
alone in its own transaction and only the one that fails again gets the error.

On a SQLite file the whole batch runs in one worker thread on a blocking connection (one thread hop per
batch, not one per statement); on other databases it runs through the async session's `run_sync`.

Before the operations run, the batch takes the admission locks they declare: PostgreSQL transaction advisory
locks (sorted, so two replicas' batches cannot deadlock), or SQLite's database-wide write lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from kairos.core.tasks import spawn

log = structlog.get_logger(__name__)

MAX_BATCH = 500
Operation = Callable[[Session], Any]
# Writes of one kind in one batch: gets the session and every item of that kind, returns one result per item.
Handler = Callable[[Session, list[Any]], list[Any]]


@dataclass
class _Pending:
    handler: Handler
    item: Any
    lock_key: str
    future: asyncio.Future


def _one_by_one(session: Session, operations: list[Operation]) -> list[Any]:
    return [operation(session) for operation in operations]


_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:key))")
_SQLITE_WRITE_LOCK = text("UPDATE runs SET status = status WHERE 1 = 0")


def take_locks(session: Session, keys: list[str]) -> None:
    """Serialises admissions on `keys` across replicas until the transaction ends."""
    if session.bind.dialect.name == "postgresql":
        for key in sorted(set(keys)):
            session.connection().execute(_ADVISORY_LOCK, {"key": key})
    elif keys:
        # Any write statement takes SQLite's (database-wide) write lock for the rest of the transaction.
        session.connection().execute(_SQLITE_WRITE_LOCK)


def _write(session: Session, batch: list[_Pending]) -> dict[int, Any]:
    take_locks(session, [pending.lock_key for pending in batch if pending.lock_key])
    groups: dict[Handler, list[_Pending]] = {}
    for pending in batch:
        groups.setdefault(pending.handler, []).append(pending)
    results: dict[int, Any] = {}
    for handler, members in groups.items():
        outputs = handler(session, [member.item for member in members])
        results.update(zip((id(member) for member in members), outputs, strict=True))
    return results


class WriteBatcher:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], sqlite_engine: Engine | None = None) -> None:
        self._sessions = sessions
        self._sqlite_engine = sqlite_engine
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="executor-sqlite") if sqlite_engine else None
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None

    async def submit(self, operation: Operation, lock_key: str = "") -> Any:
        """Runs `operation(session)` in the next batch and returns its result once committed."""
        return await self.submit_item(_one_by_one, operation, lock_key)

    async def submit_item(self, handler: Handler, item: Any, lock_key: str = "") -> Any:
        """Hands `item` to `handler` together with the batch's other items for that handler (one statement
        for many rows), and returns its result once committed."""
        if self._writer is None or self._writer.done():
            self._writer = spawn(self._write_forever(), "executor-writer")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(handler, item, lock_key, future))
        self._wake.set()
        return await future

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sqlite_engine is not None:
            self._sqlite_engine.dispose()

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                await self._commit(batch)

    def _write_blocking(self, batch: list[_Pending]) -> dict[int, Any]:
        with Session(self._sqlite_engine, expire_on_commit=False) as session, session.begin():
            return _write(session, batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            if self._thread is not None:
                results = await asyncio.get_running_loop().run_in_executor(self._thread, self._write_blocking, batch)
            else:
                async with self._sessions() as session, session.begin():
                    results = await session.run_sync(_write, batch)
        except Exception as error:
            if len(batch) == 1:
                _resolve(batch[0].future, error=error)
                return
            log.warning(
                "a batch of run writes failed; writing them one by one", size=len(batch), error=str(error)[:300]
            )
            for pending in batch:
                await self._commit([pending])
            return
        for pending in batch:
            _resolve(pending.future, result=results[id(pending)])


def _resolve(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
