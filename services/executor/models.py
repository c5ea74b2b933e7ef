"""Executor tables: the run history. `fire_id` is unique, so a redelivered or duplicated fire is one run."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kairos.registry.models import NAMING, UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_trigger_fired", "workspace_id", "trigger_id", "fire_time", "id"),
        Index("ix_runs_workspace_fired", "workspace_id", "fire_time", "id"),
        Index("ix_runs_workspace_status", "workspace_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(64))
    trigger_id: Mapped[str] = mapped_column(String(64))
    fire_id: Mapped[str] = mapped_column(String(400), unique=True)
    trigger_type: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    status_reason: Mapped[str] = mapped_column(String(400), default="")
    skip_reason: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    scheduled_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    fire_time: Mapped[datetime] = mapped_column(UtcDateTime)
    start_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    input_json: Mapped[str] = mapped_column(Text, default="{}")
    output_json: Mapped[str] = mapped_column(Text, default="null")
    payload_json: Mapped[str] = mapped_column(Text, default="null")
    error_message: Mapped[str] = mapped_column(Text, default="")
    agent: Mapped[str] = mapped_column(String(200), default="")
    agent_version: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str] = mapped_column(String(200), default="")
    webhook: Mapped[str] = mapped_column(String(200), default="")
    event_type: Mapped[str] = mapped_column(String(200), default="")
    # The run lease: the executor running an attempt renews `lease_expires_at`; another one takes the run over
    # only once it expired, incrementing `lease_token`, and every write of the attempt is fenced by the token.
    lease_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class TraceEventRow(Base):
    """One lifecycle event of a fire (trigger.fired, run.started, run.completed...), kept for GetRunTrace."""

    __tablename__ = "trace_events"
    __table_args__ = (Index("ix_trace_events_fire", "fire_id", "time"),)

    id: Mapped[str] = mapped_column(String(500), primary_key=True)
    fire_id: Mapped[str] = mapped_column(String(400))
    run_id: Mapped[str] = mapped_column(String(64), default="")
    workspace_id: Mapped[str] = mapped_column(String(64))
    trigger_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(UtcDateTime)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[int] = mapped_column(Integer, default=0)
    skip_reason: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    error_message: Mapped[str] = mapped_column(Text, default="")


class CallbackStopRow(Base):
    """A notify_url that answered 410 Gone for a trigger: no more lifecycle callbacks go there for it."""

    __tablename__ = "callback_stops"

    workspace_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    trigger_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), primary_key=True)
    stopped_at: Mapped[datetime] = mapped_column(UtcDateTime)
