"""Shared pytest fixtures for the Kairos test suite.

NATS:
    `nats_server` -- one real nats-server (JetStream, file storage in a temp dir) for the whole test
                     session, started on a free port; stopped when the session ends.
    `nats_url`    -- its `nats://127.0.0.1:<port>` URL.
    `nc`          -- a client connection to it, closed after the test.

The session server is shared: tests must not kill or restart it and should use names (streams, subjects,
buckets) that tolerate other tests' data. A test that needs an isolated or killable server constructs
`kairos.core.natsserver.EmbeddedNatsServer(tmp_path)` itself.

Databases:
    `database_url` -- parametrized: a SQLite file, and a fresh PostgreSQL database when
                      KAIROS_TEST_DATABASE_URL names a server (skipped, with that reason, otherwise).

Suite:
    `suite` -- all four services in the test's event loop with their own nats-server, an admin key, and
               helpers to create a workspace and a client.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from nats.aio.client import Client
from sqlalchemy.engine import make_url

from kairos.core import messaging
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.devtools.suite import Suite, running_suite


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNatsServer]:
    """One nats-server with JetStream for the whole session (its log: `<data_dir>/nats-server.log`)."""
    server = EmbeddedNatsServer(tmp_path_factory.mktemp("nats-session"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNatsServer) -> str:
    """URL of the session nats-server."""
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A connection to the session nats-server, named after the test."""
    client = await messaging.connect(nats_url, request.node.name)
    try:
        yield client
    finally:
        await client.close()


# ---------------------------------------------------------------- databases

POSTGRES_URL_VARIABLE = "KAIROS_TEST_DATABASE_URL"


@pytest_asyncio.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database on the server KAIROS_TEST_DATABASE_URL names, dropped afterwards."""
    base = os.environ.get(POSTGRES_URL_VARIABLE)
    if not base:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_URL_VARIABLE} (e.g. postgresql+asyncpg://postgres@127.0.0.1/test)"
        )
    url = make_url(base)
    name = f"kairos_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on a SQLite file and on PostgreSQL (skipped where none is configured)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'kairos.db'}"
    return request.getfixturevalue("postgres_url")


# ---------------------------------------------------------------- the suite in this process


@pytest_asyncio.fixture
async def suite(tmp_path: Path, database_url: str) -> AsyncIterator[Suite]:
    """All four services in-process, on SQLite and on PostgreSQL."""
    async with running_suite(tmp_path, database_url) as running:
        yield running
