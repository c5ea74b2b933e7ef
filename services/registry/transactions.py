"""Runs the registry's hot write transactions, written once as plain functions of a synchronous `Session`.

On a SQLite file the whole transaction runs in one dedicated writer thread on a synchronous engine: one hop off
the event loop per transaction instead of one per driver call (aiosqlite makes about five per statement, each a
thread hand-off that costs 0.1-1 ms on a busy machine). The single thread also serialises this process's writers,
so they queue in memory instead of sleeping in SQLite's busy handler. A writer waiting for another process's lock
waits in that thread, never on the event loop. On other databases the same function runs in the async session
through `run_sync`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(make_url(url).set(drivername="sqlite"), connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


class Transactions:
    """`await transactions.run(work)` runs `work(session)`; `work` commits what it wants kept."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], database_url: str | None = None) -> None:
        """Without `database_url` (or for a database other than a SQLite file) every transaction uses `sessions`."""
        self._sessions = sessions
        url = make_url(database_url) if database_url else None
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        if url is not None and url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            self._engine = _sqlite_engine(database_url)
            self._sync_sessions = sessionmaker(self._engine, expire_on_commit=False)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-writer")

    async def run(self, work: Callable[[Session], T]) -> T:
        if self._executor is None:
            async with self._sessions() as session:
                return await session.run_sync(work)

        def in_writer_thread() -> T:
            with self._sync_sessions() as session:
                return work(session)

        return await asyncio.get_running_loop().run_in_executor(self._executor, in_writer_thread)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._engine is not None:
            self._engine.dispose()
