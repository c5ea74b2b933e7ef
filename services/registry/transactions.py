"""Runs the registry's hot write transactions, written once as plain functions of a synchronous `Session`.

On a SQLite file the whole transaction runs in one dedicated writer thread on a synchronous engine: one hop off
the event loop per transaction instead of one per driver call (aiosqlite makes about five per statement, each a
thread hand-off that costs 0.1-1 ms on a busy machine). The single thread also serialises this process's writers,
so they queue in memory instead of sleeping in SQLite's busy handler. A writer waiting for another process's lock
waits in that thread, never on the event loop. On other databases the same function runs in the async session
through `run_sync`. Their hot statements are `PreparedStatement`s, which on the writer thread's sqlite3 connection
skip SQLAlchemy's per-execution work.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Compiled, Connection, Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

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


class PreparedStatement:
    """A Core DML statement that runs straight on a sqlite3 connection: rendered to SQL once per set of parameter
    names, with the columns' bind processors, so an execution skips SQLAlchemy's per-statement work (about 0.1 ms,
    several times what SQLite itself spends on a one-row write). On any other connection it runs through SQLAlchemy.
    """

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._rendered: dict[tuple[str, ...], tuple[Compiled, list[tuple[str, Callable[[Any], Any] | None]]]] = {}

    def _render(self, dialect: Dialect, names: tuple[str, ...]):
        compiled = self.statement.compile(dialect=dialect, column_keys=list(names))
        binds = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup
        ]
        return compiled, binds

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> int:
        """Runs the statement with `params` in the connection's transaction; returns how many rows it changed."""
        driver = connection.connection.driver_connection
        if not isinstance(driver, sqlite3.Connection):
            return connection.execute(self.statement, dict(params)).rowcount
        names = tuple(params)
        rendered = self._rendered.get(names)
        if rendered is None:
            rendered = self._rendered[names] = self._render(connection.dialect, names)
        compiled, binds = rendered
        values = compiled.construct_params(params)
        arguments = [values[name] if process is None else process(values[name]) for name, process in binds]
        try:
            return driver.execute(compiled.string, arguments).rowcount
        except sqlite3.IntegrityError as error:
            raise exc.IntegrityError(compiled.string, arguments, error) from error
