"""Trigger lifecycle: create, read, list, update, delete, pause, resume, fire, and schedule introspection."""

from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from nats.js import JetStreamContext
from sqlalchemy import Select, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from kairos.core import messaging
from kairos.core.errors import KairosError, aborted, invalid_argument, not_found, unavailable
from kairos.core.names import TriggerName, new_id
from kairos.core.paging import (
    decode_instant_token,
    decode_page_token,
    encode_instant_token,
    encode_page_token,
    page_size,
)
from kairos.core.schedule import Schedule
from kairos.registry import outbox
from kairos.registry.models import OutboxRow, TriggerRow, TriggerStatsRow, WebhookRow, WorkspaceRow
from kairos.registry.reads import COUNTERS, RowReader, ScheduleCache, fill_counters
from kairos.registry.transactions import PreparedStatement, Transactions
from kairos.registry.validation import validate_trigger
from kairos.v1 import fire_pb2, run_pb2, trigger_pb2, trigger_service_pb2

DEFAULT_MAX_SCHEDULE_TRIGGERS = 10_000
DEFAULT_MAX_WEBHOOK_EVENT_TRIGGERS = 10_000
UPDATABLE_PATHS = ("display_name", "description", "source", "action", "policies", "labels")
State = trigger_pb2.TriggerState
Kind = trigger_pb2.SourceKind
WORKSPACE_QUOTA = select(
    WorkspaceRow.max_schedule_triggers,
    WorkspaceRow.max_webhook_event_triggers,
    WorkspaceRow.schedule_trigger_count,
    WorkspaceRow.webhook_event_trigger_count,
).where(WorkspaceRow.id == bindparam("workspace_id"))
CREATED_BY_REQUEST = PreparedStatement(
    select(TriggerRow.body).where(
        TriggerRow.workspace_id == bindparam("workspace_id"), TriggerRow.request_id == bindparam("request_id")
    )
)
INSERT_TRIGGER = PreparedStatement(insert(TriggerRow.__table__))
INSERT_OUTBOX = PreparedStatement(insert(OutboxRow.__table__))
SOURCE_KINDS = {
    "schedule": Kind.SOURCE_KIND_SCHEDULE,
    "webhook": Kind.SOURCE_KIND_WEBHOOK,
    "event": Kind.SOURCE_KIND_EVENT,
}


def feed_key(workspace: str, trigger_id: str) -> str:
    return f"{workspace}.{trigger_id}"


def check_update_mask(mask: field_mask_pb2.FieldMask, updatable: tuple[str, ...], *, whole_fields: bool = True) -> None:
    """INVALID_ARGUMENT unless the mask names fields and each is updatable (by its first segment when
    `whole_fields`, e.g. `action.prompt` under `action`; else exactly)."""
    if not mask.paths:
        raise invalid_argument("MISSING_UPDATE_MASK", "update_mask", "name the fields to update")
    for path in mask.paths:
        if (path.split(".")[0] if whole_fields else path) not in updatable:
            raise invalid_argument(
                "INVALID_UPDATE_MASK", "update_mask", f"{path!r} cannot be updated; use {', '.join(updatable)}"
            )


async def page_by_id(session: AsyncSession, query: Select, id_column, size: int, token: str) -> tuple[list, str]:
    """One page of `query` in ascending id order, and the token of the next page ("" on the last)."""
    limit = page_size(size)
    if token:
        (last_id,) = decode_page_token(token, 1)
        query = query.where(id_column > last_id)
    rows = list((await session.scalars(query.order_by(id_column).limit(limit + 1))).all())
    if len(rows) <= limit:
        return rows, ""
    rows = rows[:limit]
    return rows, encode_page_token(rows[-1].id)


def timestamp(instant: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(instant)
    return stamp


@dataclass(frozen=True)
class StoredTrigger:
    trigger: trigger_pb2.Trigger
    schedule: Schedule | None


class TriggerRegistry:
    """The domain operations behind TriggerService. Every method takes the caller's workspace id."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        relay: outbox.OutboxRelay,
        js: JetStreamContext,
        reader: RowReader,
        transactions: Transactions | None = None,
    ):
        self._sessions = sessions
        self._relay = relay
        self._js = js
        self._reader = reader
        self._transactions = transactions or Transactions(sessions)
        self._schedules = ScheduleCache()

    @staticmethod
    def _decode(row: TriggerRow) -> trigger_pb2.Trigger:
        return trigger_pb2.Trigger.FromString(row.body)

    def with_info(
        self, trigger: trigger_pb2.Trigger, now: datetime | None = None, counters=None
    ) -> trigger_pb2.Trigger:
        """Fills the output-only info: the next fire time of an active schedule trigger, and `counters`
        (fire count, skipped fires, consecutive failures, last fire ns) when given."""
        if counters is not None:
            fill_counters(trigger.info, counters)
        if trigger.state == State.TRIGGER_STATE_ACTIVE and trigger.source.HasField("schedule"):
            next_fire = self._schedules.next_fire(trigger.name, trigger.revision, trigger, now or datetime.now(UTC))
            if next_fire is not None:
                trigger.info.next_fire_time.CopyFrom(timestamp(next_fire))
        return trigger

    async def _row(self, session: AsyncSession, name: TriggerName) -> TriggerRow:
        row = await session.get(TriggerRow, name.trigger)
        if row is None or row.workspace_id != name.workspace:
            raise not_found(str(name))
        return row

    @staticmethod
    def _take_quota(session: Session, workspace_id: str, kind: int) -> None:
        """Counts one more trigger of `kind` on the workspace, or RESOURCE_EXHAUSTED when its quota is full."""
        connection = session.connection()
        if TAKE_SLOT[kind].execute(connection, {"workspace_id": workspace_id}) == 1:
            return
        workspace = connection.execute(WORKSPACE_QUOTA, {"workspace_id": workspace_id}).first()
        if workspace is None:
            raise not_found(f"workspaces/{workspace_id}")
        count_column, limit_column, default, label = QUOTA_COLUMNS[kind]
        count, limit = getattr(workspace, count_column), getattr(workspace, limit_column) or default
        raise KairosError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TRIGGER_LIMIT_EXCEEDED",
            f"workspace {workspace_id} has {count} {label} triggers, its limit is {limit}",
            metadata={"kind": label, "count": str(count), "limit": str(limit)},
        )

    def _store(self, session: AsyncSession | Session, row: TriggerRow, trigger: trigger_pb2.Trigger) -> None:
        row.body = trigger.SerializeToString()
        row.state = trigger.state
        row.revision = trigger.revision
        row.agent = trigger.action.agent
        row.update_time = trigger.update_time.ToDatetime(UTC)
        outbox.stage(session, outbox.TRIGGERS, feed_key(row.workspace_id, row.id), row.body)

    async def create(self, workspace_id: str, draft: trigger_pb2.Trigger, request_id: str) -> trigger_pb2.Trigger:
        if len(request_id) > 128:
            raise invalid_argument("INVALID_REQUEST_ID", "request_id", "must be at most 128 characters")
        now = datetime.now(UTC)
        trigger, created = await self._transactions.run_grouped(
            functools.partial(self._create, workspace_id=workspace_id, draft=draft, request_id=request_id, now=now)
        )
        if created:
            await self._relay.flush_soon()
        return self.with_info(trigger, now)

    def _create(
        self, session: Session, *, workspace_id: str, draft: trigger_pb2.Trigger, request_id: str, now: datetime
    ) -> tuple[trigger_pb2.Trigger, bool]:
        """The create, without its commit: (the trigger, True), or (the one `request_id` created before, False).
        Validation and the quota refusal come before any write."""
        if request_id:
            existing = CREATED_BY_REQUEST.first(
                session.connection(), {"workspace_id": workspace_id, "request_id": request_id}
            )
            if existing is not None:
                return trigger_pb2.Trigger.FromString(existing[0]), False
        schedule = validate_trigger(draft, now)
        kind = SOURCE_KINDS[draft.source.WhichOneof("kind")]
        self._take_quota(session, workspace_id, kind)
        trigger_id = new_id("t")
        trigger = trigger_pb2.Trigger()
        trigger.CopyFrom(draft)
        trigger.name = str(TriggerName(workspace_id, trigger_id))
        trigger.ClearField("info")
        if trigger.source.HasField("webhook"):
            trigger.source.webhook.ClearField("webhooks")
        if schedule is not None:
            trigger.source.schedule.CopyFrom(schedule.to_proto())
        if trigger.state == State.TRIGGER_STATE_UNSPECIFIED:
            trigger.state = State.TRIGGER_STATE_ACTIVE
        trigger.revision = 1
        trigger.etag = "1"
        trigger.create_time.CopyFrom(timestamp(now))
        trigger.update_time.CopyFrom(timestamp(now))
        body = trigger.SerializeToString()
        # prepared Core statements rather than ORM objects: a fraction of the work per create
        connection = session.connection()
        INSERT_TRIGGER.execute(
            connection,
            {
                "id": trigger_id,
                "workspace_id": workspace_id,
                "request_id": request_id or None,
                "state": trigger.state,
                "source_kind": kind,
                "agent": trigger.action.agent,
                "revision": 1,
                "body": body,
                "create_time": now,
                "update_time": now,
            },
        )
        INSERT_OUTBOX.execute(
            connection,
            {"bucket": outbox.TRIGGERS, "key": feed_key(workspace_id, trigger_id), "value": body, "create_time": now},
        )
        return trigger, True

    async def get(self, name: TriggerName) -> trigger_pb2.Trigger:
        found = await self._reader.trigger(name.trigger)
        if found is None or found[0] != name.workspace:
            raise not_found(str(name))
        return self.with_info(trigger_pb2.Trigger.FromString(found[2]), counters=found[3:])

    async def list(
        self, workspace_id: str, request: trigger_service_pb2.ListTriggersRequest
    ) -> tuple[list[trigger_pb2.Trigger], str]:
        limit = page_size(request.page_size)
        query = (
            select(TriggerRow, *COUNTERS)
            .outerjoin(TriggerStatsRow, TriggerStatsRow.trigger_id == TriggerRow.id)
            .where(TriggerRow.workspace_id == workspace_id)
        )
        if request.state:
            query = query.where(TriggerRow.state == request.state)
        if request.source_kind:
            query = query.where(TriggerRow.source_kind == request.source_kind)
        if request.agent:
            query = query.where(TriggerRow.agent == request.agent)
        if request.page_token:
            created_at, last_id = decode_instant_token(request.page_token)
            query = query.where(
                (TriggerRow.create_time < created_at)
                | ((TriggerRow.create_time == created_at) & (TriggerRow.id < last_id))
            )
        query = query.order_by(TriggerRow.create_time.desc(), TriggerRow.id.desc()).limit(limit + 1)
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            token = encode_instant_token(rows[-1][0].create_time, rows[-1][0].id)
        now = datetime.now(UTC)
        return [self.with_info(self._decode(row[0]), now, row[1:]) for row in rows], token

    @staticmethod
    def _locked_row(session: Session, name: TriggerName) -> TriggerRow:
        row = session.get(TriggerRow, name.trigger)
        if row is None or row.workspace_id != name.workspace:
            raise not_found(str(name))
        return row

    async def _mutate(self, name: TriggerName, etag: str, change) -> trigger_pb2.Trigger:
        now = datetime.now(UTC)
        trigger, counters = await self._transactions.run(
            functools.partial(self._mutate_in, name=name, etag=etag, change=change, now=now)
        )
        await self._relay.flush_soon()
        return self.with_info(trigger, now, counters)

    def _mutate_in(self, session: Session, *, name: TriggerName, etag: str, change, now: datetime):
        row = self._locked_row(session, name)
        trigger = self._decode(row)
        if etag and etag != trigger.etag:
            raise aborted("ETAG_MISMATCH", f"{name} has changed (etag {trigger.etag}, request had {etag})")
        change(trigger)
        trigger.revision += 1
        trigger.etag = str(trigger.revision)
        trigger.update_time.CopyFrom(timestamp(now))
        self._store(session, row, trigger)
        counters = _counters(session.get(TriggerStatsRow, name.trigger))
        session.commit()
        return trigger, counters

    async def update(self, name: TriggerName, patch: trigger_pb2.Trigger, mask: field_mask_pb2.FieldMask):
        check_update_mask(mask, UPDATABLE_PATHS)
        if not mask.IsValidForDescriptor(trigger_pb2.Trigger.DESCRIPTOR):
            raise invalid_argument("INVALID_UPDATE_MASK", "update_mask", "names a field Trigger does not have")

        def apply(trigger: trigger_pb2.Trigger) -> None:
            old_kind = trigger.source.WhichOneof("kind")
            mask.MergeMessage(patch, trigger, replace_message_field=True, replace_repeated_field=True)
            if trigger.source.WhichOneof("kind") != old_kind:
                raise invalid_argument(
                    "SOURCE_KIND_CHANGED",
                    "trigger.source",
                    "the kind of source cannot change; create a new trigger",
                )
            schedule = validate_trigger(trigger, trigger.create_time.ToDatetime(UTC))
            if schedule is not None:
                trigger.source.schedule.CopyFrom(schedule.to_proto())

        return await self._mutate(name, patch.etag, apply)

    async def set_state(self, name: TriggerName, state: int, note: str) -> trigger_pb2.Trigger:
        if len(note) > 1000:
            raise invalid_argument("FIELD_TOO_LONG", "note", "must be at most 1000 characters")

        def apply(trigger: trigger_pb2.Trigger) -> None:
            trigger.state = state
            trigger.state_note = note

        return await self._mutate(name, "", apply)

    async def delete(self, name: TriggerName, etag: str) -> None:
        await self._transactions.run(functools.partial(self._delete_in, name=name, etag=etag))
        await self._relay.flush_soon()

    def _delete_in(self, session: Session, *, name: TriggerName, etag: str) -> None:
        row = self._locked_row(session, name)
        if etag and etag != str(row.revision):
            raise aborted("ETAG_MISMATCH", f"{name} has changed (etag {row.revision}, request had {etag})")
        webhook_ids = session.scalars(select(WebhookRow.id).where(WebhookRow.trigger_id == row.id)).all()
        for webhook_id in webhook_ids:
            outbox.stage(session, outbox.WEBHOOKS, webhook_id, None)
        outbox.stage(session, outbox.TRIGGERS, feed_key(row.workspace_id, row.id), None)
        session.connection().execute(RELEASE_SLOT[row.source_kind], {"workspace_id": row.workspace_id})
        session.delete(row)
        session.commit()

    async def fire(self, name: TriggerName, request: trigger_service_pb2.FireTriggerRequest) -> str:
        if len(request.request_id) > 128:
            raise invalid_argument("INVALID_REQUEST_ID", "request_id", "must be at most 128 characters")
        trigger = await self.get(name)
        fire_id = f"{name}@manual:{request.request_id}" if request.request_id else f"{name}@{new_id('m')}"
        fire = fire_pb2.FireRequest(
            fire_id=fire_id,
            trigger=str(name),
            trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_MANUAL,
            action=trigger.action,
            policies=trigger.policies,
            timezone=trigger.source.schedule.timezone if trigger.source.HasField("schedule") else "",
            input_overrides=request.input,
            trigger_revision=trigger.revision,
        )
        fire.fire_time.GetCurrentTime()
        try:
            await messaging.publish_fire(
                self._js,
                messaging.fire_subject(name.workspace, name.trigger),
                fire.SerializeToString(),
                fire_id,
            )
        except Exception as error:
            raise unavailable("FIRE_NOT_ACCEPTED", f"the fire could not be queued, retry: {error}") from error
        return fire_id

    async def upcoming(
        self, workspace_id: str, trigger_name: TriggerName | None, count: int, end: datetime | None
    ) -> list[tuple[datetime, str, Schedule]]:
        """The next `count` fires, ascending, of one trigger or every active schedule trigger of a workspace."""
        if trigger_name is not None:
            async with self._sessions() as session:
                await self._row(session, trigger_name)
        rows = await self._transactions.run(
            functools.partial(
                _active_schedules,
                workspace_id=workspace_id,
                trigger_id=trigger_name.trigger if trigger_name is not None else None,
            )
        )
        now = datetime.now(UTC)
        streams = []
        for trigger_id, revision, body in rows:
            name = str(TriggerName(workspace_id, trigger_id))
            first = self._schedules.next_fire(name, revision, body, now)
            if first is not None and (end is None or first < end):
                streams.append(_fires(first, name, self._schedules.schedule(name, revision, body), end))
        return _take(heapq.merge(*streams, key=lambda item: item[0]), count)


# Per source kind: the workspace's count column, its limit column, the limit when that is 0, and the quota's name.
QUOTA_COLUMNS = {
    Kind.SOURCE_KIND_SCHEDULE: (
        "schedule_trigger_count",
        "max_schedule_triggers",
        DEFAULT_MAX_SCHEDULE_TRIGGERS,
        "schedule",
    ),
    Kind.SOURCE_KIND_WEBHOOK: (
        "webhook_event_trigger_count",
        "max_webhook_event_triggers",
        DEFAULT_MAX_WEBHOOK_EVENT_TRIGGERS,
        "webhook_event",
    ),
}
QUOTA_COLUMNS[Kind.SOURCE_KIND_EVENT] = QUOTA_COLUMNS[Kind.SOURCE_KIND_WEBHOOK]


def _take_slot(kind: int):
    """UPDATE adding one to the workspace's count for `kind`'s quota only while it is below the limit. One
    conditional UPDATE takes the slot atomically: on PostgreSQL a concurrent create waits for the row and re-checks
    the condition, so two never both take the last slot; SQLite runs one writer at a time."""
    table = WorkspaceRow.__table__
    count_column, limit_column, default, _ = QUOTA_COLUMNS[kind]
    count = table.c[count_column]
    limit = func.coalesce(func.nullif(table.c[limit_column], 0), default)
    return update(table).where(table.c.id == bindparam("workspace_id"), count < limit).values({count_column: count + 1})


def _release_slot(kind: int):
    """UPDATE taking one from the workspace's count for `kind`'s quota (a trigger is deleted)."""
    table = WorkspaceRow.__table__
    count_column = QUOTA_COLUMNS[kind][0]
    return (
        update(table).where(table.c.id == bindparam("workspace_id")).values({count_column: table.c[count_column] - 1})
    )


TAKE_SLOT = {kind: PreparedStatement(_take_slot(kind)) for kind in QUOTA_COLUMNS}
RELEASE_SLOT = {kind: _release_slot(kind) for kind in QUOTA_COLUMNS}


def _counters(stats: TriggerStatsRow | None) -> tuple | None:
    if stats is None:
        return None
    return tuple(getattr(stats, counter.key) for counter in COUNTERS)


ACTIVE_SCHEDULES = select(TriggerRow.id, TriggerRow.revision, TriggerRow.body).where(
    TriggerRow.workspace_id == bindparam("workspace_id"),
    TriggerRow.source_kind == Kind.SOURCE_KIND_SCHEDULE,
    TriggerRow.state == State.TRIGGER_STATE_ACTIVE,
)


def _active_schedules(session: Session, workspace_id: str, trigger_id: str | None) -> list[tuple[str, int, bytes]]:
    query = ACTIVE_SCHEDULES if trigger_id is None else ACTIVE_SCHEDULES.where(TriggerRow.id == trigger_id)
    return [tuple(row) for row in session.connection().execute(query, {"workspace_id": workspace_id})]


def _fires(first: datetime, name: str, schedule: Schedule, end: datetime | None):
    instant = first
    while instant is not None and (end is None or instant < end):
        yield instant, name, schedule
        instant = schedule.next_fire_after(instant)


def _take(iterator, count: int) -> list:
    result = []
    for item in iterator:
        if len(result) >= count:
            break
        result.append(item)
    return result
