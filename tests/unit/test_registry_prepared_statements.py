"""`PreparedStatement` on the registry's SQLite writer engine stores and reads exactly what SQLAlchemy would,
reports the rows an UPDATE changed, and turns a constraint violation into the IntegrityError the create handles."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import bindparam, exc, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from kairos.registry.models import Base, TriggerRow, WorkspaceRow
from kairos.registry.transactions import PreparedStatement, _sqlite_engine
from kairos.registry.triggers import TAKE_SLOT, Kind

BERLIN = timezone(timedelta(hours=1))


@pytest.fixture
def engine(tmp_path: Path):
    engine = _sqlite_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(WorkspaceRow(id="ws", max_schedule_triggers=2, create_time=datetime.now(UTC)))
        session.commit()
    yield engine
    engine.dispose()


def trigger_values(trigger_id: str, request_id: str | None) -> dict:
    created = datetime(2026, 3, 29, 2, 30, 0, 123456, tzinfo=BERLIN)
    return {
        "id": trigger_id,
        "workspace_id": "ws",
        "request_id": request_id,
        "state": 1,
        "source_kind": Kind.SOURCE_KIND_SCHEDULE,
        "agent": "agents/a",
        "revision": 1,
        "body": b"\x00\x01body",
        "create_time": created,
        "update_time": created + timedelta(microseconds=1),
    }


def stored_row(engine: Engine, trigger_id: str) -> tuple:
    with sqlite3.connect(engine.url.database) as connection:
        return connection.execute(
            "SELECT workspace_id, request_id, state, source_kind, agent, revision, body, create_time, update_time"
            " FROM triggers WHERE id = ?",
            (trigger_id,),
        ).fetchone()


def test_a_prepared_insert_stores_what_sqlalchemy_stores(engine: Engine) -> None:
    statement = insert(TriggerRow.__table__)
    with Session(engine) as session:
        assert PreparedStatement(statement).execute(session.connection(), trigger_values("prepared", None)) == 1
        session.connection().execute(statement, trigger_values("orm", None))
        session.commit()
    assert stored_row(engine, "prepared") == stored_row(engine, "orm")
    with Session(engine) as session:
        read = session.get(TriggerRow, "prepared")
        assert read.create_time == trigger_values("prepared", None)["create_time"]
        assert read.create_time.tzinfo is not None and read.body == b"\x00\x01body" and read.request_id is None


def test_a_prepared_update_reports_the_rows_it_changed(engine: Engine) -> None:
    take_slot = TAKE_SLOT[Kind.SOURCE_KIND_SCHEDULE]
    with Session(engine) as session:
        changed = [take_slot.execute(session.connection(), {"workspace_id": "ws"}) for _ in range(3)]
        session.commit()
        assert changed == [1, 1, 0]
        assert session.get(WorkspaceRow, "ws").schedule_trigger_count == 2


def test_a_constraint_violation_is_sqlalchemys_integrity_error(engine: Engine) -> None:
    statement = PreparedStatement(insert(TriggerRow.__table__))
    with Session(engine) as session:
        statement.execute(session.connection(), trigger_values("first", "request-1"))
        session.commit()
        with pytest.raises(exc.IntegrityError):
            statement.execute(session.connection(), trigger_values("second", "request-1"))
        session.rollback()
        statement.execute(session.connection(), trigger_values("third", "request-2"))
        session.commit()
    assert stored_row(engine, "second") is None
    assert stored_row(engine, "third") is not None


def test_a_prepared_select_reads_what_sqlalchemy_reads(engine: Engine) -> None:
    statement = select(TriggerRow.body, TriggerRow.request_id, TriggerRow.create_time).where(
        TriggerRow.workspace_id == bindparam("workspace_id"), TriggerRow.request_id == bindparam("request_id")
    )
    prepared = PreparedStatement(statement)
    with Session(engine) as session:
        session.connection().execute(insert(TriggerRow.__table__), trigger_values("t", "request-1"))
        session.commit()
        params = {"workspace_id": "ws", "request_id": "request-1"}
        found = prepared.first(session.connection(), params)
        assert found == tuple(session.connection().execute(statement, params).first())
        assert found == (b"\x00\x01body", "request-1", trigger_values("t", "request-1")["create_time"])
        assert prepared.first(session.connection(), {"workspace_id": "ws", "request_id": "request-2"}) is None
