"""Writes a new Alembic revision for a service by comparing its models with a fresh, fully migrated database.

Usage: `python -m kairos.devtools.migration registry|executor "what changed"`.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy.engine import Connection

from kairos.core import db

SERVICES = {
    "registry": ("kairos.registry:migrations", "alembic_version_registry"),
    "executor": ("kairos.executor:migrations", "alembic_version_executor"),
}


async def new_revision(service: str, message: str) -> None:
    script_location, version_table = SERVICES[service]
    with tempfile.TemporaryDirectory() as scratch:
        engine = db.create_engine(f"sqlite+aiosqlite:///{Path(scratch) / 'scratch.db'}")
        await db.migrate(engine, script_location, version_table)
        config = db.alembic_config(script_location, version_table)

        def revise(connection: Connection) -> None:
            config.attributes["connection"] = connection
            command.revision(config, message=message, autogenerate=True)

        async with engine.begin() as connection:
            await connection.run_sync(revise)
        await engine.dispose()


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in SERVICES:
        raise SystemExit(f"usage: python -m kairos.devtools.migration {'|'.join(SERVICES)} MESSAGE")
    asyncio.run(new_revision(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
