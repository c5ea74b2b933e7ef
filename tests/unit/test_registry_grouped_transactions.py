"""`Transactions.run_grouped` on a SQLite file: works queued while the writer is busy share one transaction, and
each caller still gets its own outcome; a refusal keeps the others, any other error keeps nothing of its own."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from kairos.core import db
from kairos.core.errors import KairosError, invalid_argument
from kairos.registry.models import Base, WorkspaceRow
from kairos.registry.transactions import Transactions

WAIT_S = 10.0


def add_workspace(session: Session, workspace_id: str) -> str:
    session.connection().execute(insert(WorkspaceRow.__table__), {"id": workspace_id, "create_time": datetime.now(UTC)})
    return workspace_id


def refuse(session: Session) -> str:
    raise invalid_argument("REFUSED", "field", "refused before writing")


def write_then_break(session: Session) -> str:
    add_workspace(session, "broken")
    raise RuntimeError("failed after writing")


def existing_or_new(session: Session) -> str:
    if session.scalar(select(WorkspaceRow.id).where(WorkspaceRow.id == "shared")) is not None:
        return "found"
    return add_workspace(session, "shared")


@pytest.fixture
async def transactions(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    engine = db.create_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    result = Transactions(db.session_factory(engine), url)
    yield result
    result.close()
    await engine.dispose()


async def stored_ids(transactions: Transactions) -> set[str]:
    return set(await transactions.run(lambda session: list(session.scalars(select(WorkspaceRow.id)))))


async def test_works_queued_together_each_get_their_own_outcome(transactions: Transactions) -> None:
    writer_busy, release_writer = threading.Event(), threading.Event()

    def hold_the_writer(session: Session) -> str:
        writer_busy.set()
        release_writer.wait(WAIT_S)
        return add_workspace(session, "first")

    first = asyncio.ensure_future(transactions.run_grouped(hold_the_writer))
    assert await asyncio.to_thread(writer_busy.wait, WAIT_S)
    queued = [
        asyncio.ensure_future(transactions.run_grouped(work))
        for work in (
            lambda session: add_workspace(session, "kept"),
            refuse,
            existing_or_new,
            existing_or_new,
            write_then_break,
        )
    ]
    # callbacks run in the order they were scheduled: each queued work has reached the queue before this one runs
    asyncio.get_running_loop().call_soon(release_writer.set)
    outcomes = await asyncio.gather(first, *queued, return_exceptions=True)

    assert outcomes[0] == "first" and outcomes[1] == "kept"
    assert isinstance(outcomes[2], KairosError) and outcomes[2].reason == "REFUSED"
    assert outcomes[3:5] == ["shared", "found"]
    assert isinstance(outcomes[5], RuntimeError)
    assert await stored_ids(transactions) == {"first", "kept", "shared"}


async def test_a_work_alone_commits_without_committing_itself(transactions: Transactions) -> None:
    assert await transactions.run_grouped(lambda session: add_workspace(session, "alone")) == "alone"
    assert await stored_ids(transactions) == {"alone"}
