"""Registry tables. A trigger's and a webhook's full configuration is stored as its protobuf message; the
columns beside it exist to filter, count and enforce uniqueness."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class WorkspaceRow(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    max_schedule_triggers: Mapped[int] = mapped_column(Integer, default=0)
    max_webhook_event_triggers: Mapped[int] = mapped_column(Integer, default=0)
    max_concurrent_runs: Mapped[int] = mapped_column(Integer, default=0)
    # the workspace's triggers per quota, kept by the create and delete transactions so a quota check reads one
    # row instead of counting every trigger
    schedule_trigger_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    webhook_event_trigger_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    revision: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32))
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class WorkspaceSigningKeyRow(Base):
    """A key the executor signs the workspace's outgoing requests with: stored sealed only."""

    __tablename__ = "workspace_signing_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    sealed_key: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class TriggerRow(Base):
    __tablename__ = "triggers"
    __table_args__ = (
        UniqueConstraint("workspace_id", "request_id"),
        Index("ix_triggers_workspace_created", "workspace_id", "create_time", "id"),
        Index("ix_triggers_workspace_kind_state", "workspace_id", "source_kind", "state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    state: Mapped[int] = mapped_column(Integer)
    source_kind: Mapped[int] = mapped_column(Integer)
    agent: Mapped[str] = mapped_column(String(200), default="")
    revision: Mapped[int] = mapped_column(Integer, default=1)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class TriggerStatsRow(Base):
    """A trigger's counters, kept from its trace events (see `kairos.registry.stats`); no row until its first
    counted event. `last_fire_time_ns` is nanoseconds since the Unix epoch."""

    __tablename__ = "trigger_stats"

    trigger_id: Mapped[str] = mapped_column(ForeignKey("triggers.id", ondelete="CASCADE"), primary_key=True)
    fire_count: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped_fire_count: Mapped[int] = mapped_column(BigInteger, default=0)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_fire_time_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AppliedTraceEventRow(Base):
    """The KAIROS_TRACE stream sequence of each trace event already counted, so a redelivery never counts
    twice; rows at or below the consumer's ack floor are pruned (JetStream never redelivers those)."""

    __tablename__ = "applied_trace_events"

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class WebhookRow(Base):
    __tablename__ = "webhooks"
    __table_args__ = (UniqueConstraint("workspace_id", "request_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    trigger_id: Mapped[str] = mapped_column(ForeignKey("triggers.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class WebhookCredentialRow(Base):
    __tablename__ = "webhook_credentials"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    sealed_signing_key: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    hint: Mapped[str] = mapped_column(String(8))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class OutboxRow(Base):
    """A committed change not yet on the NATS change feed: `value` None means delete `key` from `bucket`."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(256))
    value: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
