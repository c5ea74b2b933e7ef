"""Runs the registry's hot write transactions, written once as plain functions of a synchronous `Session`.

On a SQLite file the whole transaction runs in one dedicated writer thread on a synchronous engine: one hop off
the event loop per transaction instead of one per driver call (aiosqlite makes about five per statement, each a
thread hand-off that costs 0.1-1 ms on a busy machine). The single thread also serialises this process's writers,
so they queue in memory instead of sleeping in SQLite's busy handler. A writer waiting for another process's lock
waits in that thread, never on the event loop. On other databases the same function runs in the async session
through `run_sync`. Creates go through `run_grouped`: the writer thread runs the creates that queued while it was busy
in one transaction, so they share one commit (SQLite's commit and SQLAlchemy's session work are most of a create's
cost in this thread). Their hot statements are `PreparedStatement`s, which on the writer thread's sqlite3 connection
skip SQLAlchemy's per-execution work.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Compiled, Connection, Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

from kairos.core.errors import KairosError

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
        self._grouped: deque[tuple[Callable[[Session], Any], asyncio.Future]] = deque()

    async def run(self, work: Callable[[Session], T]) -> T:
        if self._executor is None:
            async with self._sessions() as session:
                return await session.run_sync(work)

        def in_writer_thread() -> T:
            with self._sync_sessions() as session:
                return work(session)

        return await asyncio.get_running_loop().run_in_executor(self._executor, in_writer_thread)

    async def run_grouped(self, work: Callable[[Session], T]) -> T:
        """Runs `work(session)` and commits it, in the SQLite writer thread together with the other grouped works
        queued meanwhile. `work` does not commit, and either returns or raises a `KairosError` having written nothing;
        any other error rolls the group back and each work runs again alone. A work that raises IntegrityError alone
        (a concurrent writer took the same unique key) runs once more after a rollback, and finds what the other
        wrote."""
        if self._executor is None:
            async with self._sessions() as session:
                try:
                    return await session.run_sync(_committed, work)
                except exc.IntegrityError:
                    await session.rollback()
                return await session.run_sync(_committed, work)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._grouped.append((work, future))
        if len(self._grouped) == 1:
            # the writer drains the queue until it is empty, so a work queued behind others is taken with them
            loop.run_in_executor(self._executor, self._run_groups, loop)
        return await future

    def _run_groups(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._grouped:
            group = [self._grouped.popleft() for _ in range(len(self._grouped))]
            outcomes = self._run_group([work for work, _ in group])
            loop.call_soon_threadsafe(
                _settle, [(future, *outcome) for (_, future), outcome in zip(group, outcomes, strict=True)]
            )

    def _run_group(self, works: list[Callable[[Session], Any]]) -> list[tuple[bool, Any]]:
        """(True, result) or (False, exception) per work; never raises, so every caller is answered."""
        if len(works) > 1:
            try:
                return self._run_together(works)
            except Exception:  # rolled back when the session closed; each work runs alone and meets its own error
                pass
        return [self._run_alone(work) for work in works]

    def _run_together(self, works: list[Callable[[Session], Any]]) -> list[tuple[bool, Any]]:
        with self._sync_sessions() as session:
            outcomes: list[tuple[bool, Any]] = []
            for work in works:
                try:
                    outcomes.append((True, work(session)))
                except KairosError as error:
                    outcomes.append((False, error))
            session.commit()
            return outcomes

    def _run_alone(self, work: Callable[[Session], Any]) -> tuple[bool, Any]:
        try:
            with self._sync_sessions() as session:
                try:
                    return True, _committed(session, work)
                except exc.IntegrityError:
                    session.rollback()
                return True, _committed(session, work)
        except Exception as error:
            return False, error

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._engine is not None:
            self._engine.dispose()


def _committed(session: Session, work: Callable[[Session], T]) -> T:
    result = work(session)
    session.commit()
    return result


def _settle(outcomes: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for future, succeeded, value in outcomes:
        if future.cancelled():
            continue
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)


class PreparedStatement:
    """A Core statement that runs straight on a sqlite3 connection: rendered to SQL once per set of parameter names,
    with the columns' bind (and, for a SELECT, result) processors, so an execution skips SQLAlchemy's per-statement
    work (about 0.1 ms, several times what SQLite itself spends on a one-row read or write). On any other connection
    it runs through SQLAlchemy."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._rendered: dict[tuple[str, ...], tuple[Compiled, list[tuple[str, Callable[[Any], Any] | None]]]] = {}
        self._results: list[Callable[[Any], Any] | None] | None = None

    def _render(self, dialect: Dialect, names: tuple[str, ...]):
        compiled = self.statement.compile(dialect=dialect, column_keys=list(names))
        binds = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup
        ]
        return compiled, binds

    def _run(self, driver: sqlite3.Connection, dialect: Dialect, params: Mapping[str, Any]) -> sqlite3.Cursor:
        names = tuple(params)
        rendered = self._rendered.get(names)
        if rendered is None:
            rendered = self._rendered[names] = self._render(dialect, names)
        compiled, binds = rendered
        values = compiled.construct_params(params)
        arguments = [values[name] if process is None else process(values[name]) for name, process in binds]
        try:
            return driver.execute(compiled.string, arguments)
        except sqlite3.IntegrityError as error:
            raise exc.IntegrityError(compiled.string, arguments, error) from error

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> int:
        """Runs the statement with `params` in the connection's transaction; returns how many rows it changed."""
        driver = connection.connection.driver_connection
        if not isinstance(driver, sqlite3.Connection):
            return connection.execute(self.statement, dict(params)).rowcount
        return self._run(driver, connection.dialect, params).rowcount

    def first(self, connection: Connection, params: Mapping[str, Any]) -> tuple | None:
        """The first row the SELECT returns with `params`, or None."""
        driver = connection.connection.driver_connection
        if not isinstance(driver, sqlite3.Connection):
            row = connection.execute(self.statement, dict(params)).first()
            return tuple(row) if row is not None else None
        row = self._run(driver, connection.dialect, params).fetchone()
        if row is None:
            return None
        if self._results is None:
            columns = self.statement.selected_columns  # type: ignore[attr-defined]
            self._results = [
                column.type.dialect_impl(connection.dialect).result_processor(connection.dialect, None)
                for column in columns
            ]
        return tuple(
            value if process is None else process(value) for value, process in zip(row, self._results, strict=True)
        )
