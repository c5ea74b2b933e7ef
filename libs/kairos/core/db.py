"""Async SQLAlchemy engines and sessions (SQLite by default, any async URL such as postgresql+asyncpg://),
and Alembic migrations run at start-up, one version table per service so services can share a database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import MetaData, event
from sqlalchemy import create_engine as create_engine_sync
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from kairos.core.startup_errors import DatabaseUnavailableError


def create_engine(url: str) -> AsyncEngine:
    """An engine for `url`; a SQLite file gets its directory created, WAL and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def create_sync_sqlite_engine(engine: AsyncEngine) -> Engine | None:
    """A blocking engine on the same SQLite file as `engine`, with the same PRAGMAs, for work that runs many
    statements in one worker thread; None when `engine` is not a SQLite file."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    sync_engine = create_engine_sync(url.set(drivername="sqlite"), connect_args={"timeout": 30})
    event.listen(sync_engine, "connect", _sqlite_pragmas)
    return sync_engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(script_location: str, version_table: str) -> Config:
    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["version_table"] = version_table
    return config


async def migrate(engine: AsyncEngine, script_location: str, version_table: str) -> None:
    """Upgrades the schema to head. `script_location` is a package path such as `kairos.registry:migrations`.
    Raises DatabaseUnavailableError when no connection can be made (down, refused, wrong credentials)."""
    config = alembic_config(script_location, version_table)
    try:
        async with engine.connect():
            pass
    except (OSError, TimeoutError, DBAPIError) as error:
        where = engine.url.render_as_string(hide_password=True)
        reason = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
        raise DatabaseUnavailableError(f"database: could not connect to {where}: {reason}") from error

    def upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        await connection.run_sync(upgrade)


def run_migrations(context: EnvironmentContext, metadata: MetaData) -> None:
    """The body of every service's Alembic env.py: migrate on the connection `migrate` handed over."""
    config = context.config
    context.configure(
        connection=config.attributes["connection"],
        target_metadata=metadata,
        version_table=config.attributes["version_table"],
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
