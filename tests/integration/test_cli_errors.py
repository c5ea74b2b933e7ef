"""What the `kairos` command says when it cannot do its work: one line naming the problem (and what to do), exit code
1, never a password. `kairos serve <service>` with a wrong database, or on a port already in use, was a traceback
(`No module named 'psycopg'` for a plain `postgresql://` URL, a bare `ConnectionRefusedError` for a database that
is down, `Address already in use` or grpcio's "Failed to bind")."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from kairos.core.natsserver import EmbeddedNatsServer, free_port
from kairos.devtools.processes import KAIROS_COMMAND

PASSWORD = "hunter2-not-logged"


async def serve(service: str, **settings: str) -> tuple[int, str]:
    """Runs `python -m kairos.<service>` (`kairos serve <service>`) with `settings` until it exits; its exit code and
    stderr."""
    env = {**os.environ, "KAIROS_GRPC_PORT": "0", "KAIROS_HTTP_PORT": "0", **settings}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"kairos.{service}",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            _, errors = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, errors.decode()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
async def test_a_database_that_refuses_connections_is_one_line_without_the_password(
    tmp_path: Path, scheme: str
) -> None:
    port = free_port()  # nothing listens there
    async with EmbeddedNatsServer(tmp_path / "nats") as nats_server:
        code, errors = await serve(
            "registry",
            KAIROS_DATABASE_URL=f"{scheme}://kairos:{PASSWORD}@127.0.0.1:{port}/kairos",
            KAIROS_NATS_URL=nats_server.url,
        )
    assert code == 1, errors
    last_line = errors.strip().splitlines()[-1]
    assert last_line.startswith(
        f"kairos: database: could not connect to postgresql+asyncpg://kairos:***@127.0.0.1:{port}/"
    )
    assert "Connection refused" in last_line
    assert "Traceback" not in errors
    assert PASSWORD not in errors


@pytest.mark.timeout(120)
async def test_an_unsupported_database_is_a_configuration_error(tmp_path: Path) -> None:
    code, errors = await serve(
        "registry",
        KAIROS_DATABASE_URL=f"mysql://kairos:{PASSWORD}@127.0.0.1/kairos",
        KAIROS_NATS_URL="nats://127.0.0.1:1",
    )
    assert code == 1, errors
    assert errors.strip().splitlines()[-1] == (
        "kairos: configuration error: KAIROS_DATABASE_URL: Kairos runs on SQLite or PostgreSQL, not 'mysql' "
        "(e.g. sqlite+aiosqlite:///.kairos/kairos.db or postgresql+asyncpg://user@host/kairos)"
    )
    assert PASSWORD not in errors


@pytest.mark.timeout(60)
async def test_a_client_command_with_no_kairos_to_talk_to_says_how_to_start_one(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    process = await asyncio.create_subprocess_exec(
        str(KAIROS_COMMAND),
        "triggers",
        "list",
        env={**os.environ, "KAIROS_ADDRESS": address, "KAIROS_API_KEY": "kairos_x_y"},
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, errors = await process.communicate()
    assert process.returncode == 1
    lines = errors.decode().strip().splitlines()
    assert lines[0].startswith("kairos: UNAVAILABLE: ")
    assert (
        lines[-1]
        == f"  is Kairos running at {address}? `make dev` starts it; KAIROS_ADDRESS points the CLI at another one"
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("service", "variable", "problem"),
    [
        (
            "ingress",
            "KAIROS_HTTP_PORT",
            "HTTP cannot listen on 127.0.0.1:{port} (KAIROS_HTTP_HOST, KAIROS_HTTP_PORT): ",
        ),
        (
            "registry",
            "KAIROS_GRPC_PORT",
            "gRPC cannot listen on 127.0.0.1:{port} (KAIROS_GRPC_HOST, KAIROS_GRPC_PORT): ",
        ),
    ],
)
async def test_a_port_already_in_use_is_named_with_its_variable(
    tmp_path: Path, service: str, variable: str, problem: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with EmbeddedNatsServer(tmp_path / "nats") as nats_server:
            code, errors = await serve(
                service,
                KAIROS_NATS_URL=nats_server.url,
                KAIROS_DATABASE_URL=f"sqlite:///{tmp_path / 'kairos.db'}",
                **{variable: str(port)},
            )
    assert code == 1, errors
    assert errors.strip().splitlines()[-1].startswith("kairos: " + problem.format(port=port))
    assert "Traceback" not in errors
