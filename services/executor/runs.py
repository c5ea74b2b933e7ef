"""The run history: one row per fire id, read and written in short transactions.

Admission (may this fire start now?) is decided inside one transaction that first takes a per-workspace
lock (a PostgreSQL transaction advisory lock; SQLite's single writer lock), so the overlap policy, the
daily cap and the workspace concurrency limit hold across any number of executor replicas.

A running run is leased: the executor that admitted it renews the lease while its attempt runs, another
executor takes a redelivered fire over only once the lease expired (the first one is dead or stalled), and
takes it with a new fencing token, so the writes of a stalled executor that wakes up again are refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

from google.protobuf import json_format, struct_pb2
from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from kairos.core.errors import not_found
from kairos.core.names import RunName, TriggerName, new_id, parse_trigger
from kairos.core.paging import decode_instant_token, encode_instant_token, page_size
from kairos.executor.batching import WriteBatcher
from kairos.executor.models import RunRow, TraceEventRow
from kairos.executor.policy import Overlap, local_day, overlap_policy
from kairos.v1 import fire_pb2, run_pb2

Status = run_pb2.RunStatus
TERMINAL = {
    Status.RUN_STATUS_COMPLETED,
    Status.RUN_STATUS_FAILED,
    Status.RUN_STATUS_CANCELLED,
    Status.RUN_STATUS_TIMED_OUT,
    Status.RUN_STATUS_SKIPPED,
}
ACTIVE = (Status.RUN_STATUS_PENDING, Status.RUN_STATUS_RUNNING)
FAILED = {Status.RUN_STATUS_FAILED, Status.RUN_STATUS_TIMED_OUT}
FINISH_COLUMNS = ("status", "status_reason", "end_time", "duration_ms", "output_json", "error_message")
LIFECYCLE_ORDER = {
    kind: rank
    for rank, kind in enumerate(
        ("trigger.fired", "run.queued", "run.started", "run.retrying", "run.completed", "run.failed", "run.skipped")
    )
}
SkipReason = run_pb2.SkipReason
SKIP_REASONS = {
    SkipReason.SKIP_REASON_OVERLAP: "overlap",
    SkipReason.SKIP_REASON_DAILY_CAP: "daily cap",
    SkipReason.SKIP_REASON_PAUSED: "paused",
}


@dataclass
class Admission:
    """What to do with a fire: `run` it (row is running, leased to the caller), drop a `duplicate`, record it
    `skipped`, `wait` (row is pending: the overlap policy or the workspace limit holds it back; ask again
    later), or leave it `leased` (another executor holds the running run's lease; ask again once it expires)."""

    outcome: str
    row: RunRow | None = None
    cancelled: list[RunRow] = field(default_factory=list)
    resumed: bool = False
    created: bool = False
    events: list[run_pb2.TraceEvent] = field(default_factory=list)


# The hot statements, built once: building a statement and its cache key cost more than running it on SQLite.
_RUNS = RunRow.__table__
_KNOWN_FIRES = select(RunRow.fire_id).where(RunRow.fire_id.in_(bindparam("fire_ids", expanding=True)))
_RUNNING_BY_WORKSPACE = (
    select(RunRow.workspace_id, func.count())
    .where(RunRow.workspace_id.in_(bindparam("workspaces", expanding=True)), RunRow.status == Status.RUN_STATUS_RUNNING)
    .group_by(RunRow.workspace_id)
)
_INSERT_RUN = insert(_RUNS)
_READ_RUNS = select(_RUNS).where(_RUNS.c.id.in_(bindparam("ids", expanding=True))).with_for_update()
_FINISH_RUN = (
    update(_RUNS)
    .where(
        _RUNS.c.id == bindparam("run_id"),
        _RUNS.c.lease_token == bindparam("token"),
        or_(*(_RUNS.c.status == status for status in ACTIVE)),
    )
    .values({column: bindparam(f"new_{column}") for column in FINISH_COLUMNS})
)
_RENEW_LEASE = (
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("run_id"), _RUNS.c.lease_token == bindparam("token"))
    .values(lease_expires_at=bindparam("expires"))
)
_INSERT_NEW: dict[tuple, Any] = {}


@lru_cache(maxsize=65_536)
def parsed_trigger(name: str) -> TriggerName:
    """parse_trigger for the `trigger` field of fires and events, cached: every fire and every one of its
    events names one of a few triggers, and parsing (regular expressions) was a visible share of a run."""
    return parse_trigger(name, "trigger")


Describe = Callable[[Admission], list[run_pb2.TraceEvent]]
DescribeRow = Callable[[RunRow], list[run_pb2.TraceEvent]]


@dataclass
class _AdmitRequest:
    fire: fire_pb2.FireRequest
    run_input: dict[str, Any]
    workspace_limit: int
    describe: Describe | None
    paused: bool


@dataclass
class _FinishRequest:
    row: RunRow
    changes: dict[str, Any]
    describe: DescribeRow | None


def _store_events(session: Session, events: list[run_pb2.TraceEvent]) -> None:
    """Inserts lifecycle events; one recorded again (a redelivered fire) keeps its first copy."""
    if not events:
        return
    insert_new(session, TraceEventRow, [event_row(event) for event in events], ["id"])


def insert_new(session: Session, model: type, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """Inserts `rows`, leaving out those whose `keys` are already stored."""
    dialect = session.bind.dialect.name
    statement = _INSERT_NEW.get((dialect, model, tuple(keys)))
    if statement is None:
        insert_into = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert_into(model.__table__).on_conflict_do_nothing(index_elements=keys)
        _INSERT_NEW[(dialect, model, tuple(keys))] = statement
    session.connection().execute(statement, rows)


def event_row(event: run_pb2.TraceEvent) -> dict[str, Any]:
    trigger = parsed_trigger(event.trigger)
    return {
        "id": event.id,
        "fire_id": event.fire_id,
        "run_id": event.run.rsplit("/", 1)[1] if event.run else "",
        "workspace_id": trigger.workspace,
        "trigger_id": trigger.trigger,
        "type": event.type,
        "time": event.time.ToDatetime(UTC),
        "attempt": event.attempt,
        "status": event.status,
        "skip_reason": event.skip_reason,
        "duration_ms": event.duration_ms,
        "error_message": event.error_message,
    }


def event_from_row(row: TraceEventRow) -> run_pb2.TraceEvent:
    trigger = f"workspaces/{row.workspace_id}/triggers/{row.trigger_id}"
    event = run_pb2.TraceEvent(
        id=row.id,
        type=row.type,
        source="AUTOMATION",
        fire_id=row.fire_id,
        run=f"{trigger}/runs/{row.run_id}" if row.run_id else "",
        trigger=trigger,
        attempt=row.attempt,
        status=row.status,
        skip_reason=row.skip_reason,
        duration_ms=row.duration_ms,
        error_message=row.error_message,
    )
    event.time.FromDatetime(row.time)
    return event


def _elapsed_ms(row: RunRow, now: datetime) -> int:
    return int((now - (row.start_time or now)).total_seconds() * 1000) if row.start_time else 0


def _may_finish(stored: RunRow, attempted: RunRow) -> bool:
    return stored.status in ACTIVE and stored.lease_token == attempted.lease_token


def run_name(row: RunRow) -> str:
    return str(RunName(row.workspace_id, row.trigger_id, row.id))


def to_proto(row: RunRow) -> run_pb2.Run:
    run = run_pb2.Run(
        name=run_name(row),
        trigger=f"workspaces/{row.workspace_id}/triggers/{row.trigger_id}",
        trigger_type=row.trigger_type,
        status=row.status,
        status_reason=row.status_reason,
        skip_reason=row.skip_reason,
        fire_id=row.fire_id,
        attempt=row.attempt,
        duration_ms=row.duration_ms,
        error_message=row.error_message,
        agent=row.agent,
        agent_version=row.agent_version,
        owner=row.owner,
        webhook=row.webhook,
        event_type=row.event_type,
    )
    for column in ("scheduled_time", "fire_time", "start_time", "end_time"):
        instant = getattr(row, column)
        if instant is not None:
            getattr(run, column).FromDatetime(instant)
    run.input.update(json.loads(row.input_json))
    json_format.ParseDict(json.loads(row.output_json), run.output)
    json_format.ParseDict(json.loads(row.payload_json), run.payload)
    return run


def value_to_python(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value) if value.WhichOneof("kind") else None


class RunValues(SimpleNamespace):
    """A run's column values, with the attributes of a RunRow: the hot paths write runs with Core statements
    and hand these back, sparing the ORM's per-object bookkeeping."""


def _take_lease(row: RunRow | RunValues, now: datetime, lease: timedelta) -> None:
    row.lease_token = (row.lease_token or 0) + 1
    row.lease_expires_at = now + lease


class RunStore:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        retention: int,
        lease_s: float = 30.0,
        sqlite_engine: Engine | None = None,
    ) -> None:
        self._sessions = sessions
        self._retention = retention
        self._lease = timedelta(seconds=lease_s)
        self._trim_every = max(1, min(100, retention // 10))
        self._writes = WriteBatcher(sessions, sqlite_engine)
        self._ended: dict[tuple[str, str], int] = {}

    async def stop(self) -> None:
        await self._writes.stop()

    @staticmethod
    def _new_values(fire: fire_pb2.FireRequest, run_input: dict[str, Any], now: datetime) -> dict[str, Any]:
        trigger = parsed_trigger(fire.trigger)
        return dict(
            id=new_id("r"),
            workspace_id=trigger.workspace,
            trigger_id=trigger.trigger,
            fire_id=fire.fire_id,
            trigger_type=fire.trigger_type,
            status=Status.RUN_STATUS_PENDING,
            status_reason="",
            skip_reason=SkipReason.SKIP_REASON_UNSPECIFIED,
            attempt=0,
            scheduled_time=fire.scheduled_time.ToDatetime(UTC) if fire.HasField("scheduled_time") else None,
            fire_time=fire.fire_time.ToDatetime(UTC) if fire.HasField("fire_time") else now,
            duration_ms=0,
            input_json=json.dumps(run_input),
            output_json="null",
            payload_json=fire.payload_json.decode() if fire.payload_json else json.dumps(value_to_python(fire.payload)),
            error_message="",
            agent=fire.action.agent,
            agent_version=fire.action.agent_version,
            owner=fire.action.owner,
            webhook=fire.webhook,
            event_type=fire.event_type,
            start_time=None,
            end_time=None,
            lease_token=0,
            lease_expires_at=None,
        )

    async def admit(
        self,
        fire: fire_pb2.FireRequest,
        run_input: dict[str, Any],
        workspace_limit: int,
        describe: Describe | None = None,
        paused: bool = False,
    ) -> Admission:
        """Decides, atomically, whether the fire's run starts now, and records the decision and the events
        `describe(admission)` returns for it. A new fire of a `paused` trigger is recorded skipped."""
        trigger = parsed_trigger(fire.trigger)
        request = _AdmitRequest(fire, run_input, workspace_limit, describe, paused)
        return await self._writes.submit_item(self._admit_many, request, lock_key=f"runs/{trigger.workspace}")

    def _admit_many(self, session: Session, requests: list[_AdmitRequest]) -> list[Admission]:
        """Admits a batch: new fires of triggers that allow overlap and have no daily cap (the common case)
        take one query for duplicates, one for the workspaces' running counts and one Core insert for them
        all (their rows are RunValues, not ORM objects); every other fire goes through the full admission."""
        results: dict[int, Admission] = {}
        simple = [
            index
            for index, request in enumerate(requests)
            if overlap_policy(request.fire) == Overlap.OVERLAP_POLICY_ALLOW
            and request.fire.policies.max_runs_per_day <= 0
            and not request.paused
        ]
        if simple:
            fire_ids = [requests[index].fire.fire_id for index in simple]
            core = session.connection()  # Core statements skip the ORM session's per-statement work
            known = set(core.execute(_KNOWN_FIRES, {"fire_ids": fire_ids}).scalars().all())
            fresh = [index for index in simple if requests[index].fire.fire_id not in known]
            now = datetime.now(UTC)
            rows = {
                index: RunValues(**self._new_values(requests[index].fire, requests[index].run_input, now))
                for index in fresh
            }
            workspaces = {row.workspace_id for row in rows.values()}
            running = dict(core.execute(_RUNNING_BY_WORKSPACE, {"workspaces": list(workspaces)}).all())
            for index, row in rows.items():
                count = running.get(row.workspace_id, 0)
                if count >= requests[index].workspace_limit:
                    results[index] = Admission("wait", row, created=True)
                    continue
                running[row.workspace_id] = count + 1
                row.status = Status.RUN_STATUS_RUNNING
                row.attempt = 1
                row.start_time = now
                _take_lease(row, now, self._lease)
                results[index] = Admission("run", row)
            if rows:
                core.execute(_INSERT_RUN, [vars(row) for row in rows.values()])
        for index, request in enumerate(requests):
            if index not in results:
                results[index] = self._admit(session, request)
        events: list[run_pb2.TraceEvent] = []
        for index, request in enumerate(requests):
            if request.describe is not None:
                results[index].events = request.describe(results[index])
                events.extend(results[index].events)
        _store_events(session, events)
        return [results[index] for index in range(len(requests))]

    def _admit(self, session: Session, request: _AdmitRequest) -> Admission:
        fire, workspace_limit = request.fire, request.workspace_limit
        now = datetime.now(UTC)
        row = session.scalar(select(RunRow).where(RunRow.fire_id == fire.fire_id))
        if row is not None and row.status in TERMINAL:
            return Admission("duplicate", row)
        if row is not None and row.status == Status.RUN_STATUS_RUNNING:
            if row.lease_expires_at is not None and row.lease_expires_at > now:
                return Admission("leased", row)
            _take_lease(row, now, self._lease)
            return Admission("run", row, resumed=True)
        is_new = row is None
        if row is None:
            row = RunRow(**self._new_values(fire, request.run_input, now))
            if request.paused:
                return self._skip(session, row, SkipReason.SKIP_REASON_PAUSED, now)
            if self._over_daily_cap(session, fire, row):
                return self._skip(session, row, SkipReason.SKIP_REASON_DAILY_CAP, now)
        policy = overlap_policy(fire)
        others: list[RunRow] = []
        if policy != Overlap.OVERLAP_POLICY_ALLOW:
            others = list(
                (
                    session.scalars(
                        select(RunRow).where(
                            RunRow.workspace_id == row.workspace_id,
                            RunRow.trigger_id == row.trigger_id,
                            RunRow.status.in_(ACTIVE),
                            RunRow.id != row.id,
                        )
                    )
                ).all()
            )
        cancelled: list[RunRow] = []
        if others and policy == Overlap.OVERLAP_POLICY_SKIP and row.attempt == 0:
            return self._skip(session, row, SkipReason.SKIP_REASON_OVERLAP, now)
        if others and policy == Overlap.OVERLAP_POLICY_BUFFER_ONE:
            waiting = [other for other in others if other.attempt == 0]
            if waiting and is_new:
                return self._skip(session, row, SkipReason.SKIP_REASON_OVERLAP, now)
            if any(other.attempt > 0 for other in others):
                session.add(row)
                return Admission("wait", row, created=is_new)
        if others and policy == Overlap.OVERLAP_POLICY_CANCEL_OTHER:
            for other in others:
                other.status = Status.RUN_STATUS_CANCELLED
                other.status_reason = "cancelled by a newer fire (overlap policy cancel_other)"
                other.end_time = now
                other.duration_ms = _elapsed_ms(other, now)
                cancelled.append(other)
        running = session.scalar(
            select(func.count())
            .select_from(RunRow)
            .where(RunRow.workspace_id == row.workspace_id, RunRow.status == Status.RUN_STATUS_RUNNING)
        )
        if running >= workspace_limit:
            session.add(row)
            return Admission("wait", row, cancelled, created=is_new)
        row.status = Status.RUN_STATUS_RUNNING
        row.attempt += 1
        row.start_time = row.start_time or now
        _take_lease(row, now, self._lease)
        session.add(row)
        return Admission("run", row, cancelled)

    @staticmethod
    def _skip(session: Session, row: RunRow, reason: int, now: datetime) -> Admission:
        row.status = Status.RUN_STATUS_SKIPPED
        row.skip_reason = reason
        row.status_reason = SKIP_REASONS[reason]
        row.end_time = now
        session.add(row)
        return Admission("skipped", row)

    @staticmethod
    def _over_daily_cap(session: Session, fire: fire_pb2.FireRequest, row: RunRow) -> bool:
        cap = fire.policies.max_runs_per_day
        if cap <= 0:
            return False
        start, end = local_day(row.fire_time, fire.timezone)
        today = session.scalar(
            select(func.count())
            .select_from(RunRow)
            .where(
                RunRow.workspace_id == row.workspace_id,
                RunRow.trigger_id == row.trigger_id,
                RunRow.fire_time >= start,
                RunRow.fire_time < end,
                RunRow.status != Status.RUN_STATUS_SKIPPED,
            )
        )
        return today >= cap

    async def retry_later(self, row: RunRow, error: str, describe: DescribeRow | None = None) -> RunRow:
        """Records a failed attempt that will be retried: the run waits, pending, for its next attempt."""

        def operation(session: Session) -> RunRow:
            stored = session.get(RunRow, row.id)
            if stored is None:
                raise not_found(run_name(row))
            if stored.lease_token != row.lease_token:
                return stored
            if stored.status not in TERMINAL:
                stored.status = Status.RUN_STATUS_PENDING
                stored.error_message = error
                stored.lease_expires_at = None
            if describe is not None:
                _store_events(session, describe(stored))
            return stored

        return await self._writes.submit(operation)

    async def finish(
        self,
        row: RunRow,
        status: int,
        output: Any = None,
        error: str = "",
        reason: str = "",
        describe: DescribeRow | None = None,
    ) -> RunRow:
        """Ends a run and stores the events `describe(run)` returns. A no-op when it already ended, or when
        `row.lease_token` is not the run's token any more (another executor took it over): the stored run is
        returned as it is."""

        now = datetime.now(UTC)
        changes = {
            "status": status,
            "status_reason": reason,
            "end_time": now,
            "duration_ms": _elapsed_ms(row, now),
            "output_json": json.dumps(output),
            "error_message": error,
        }
        return await self._writes.submit_item(self._finish_many, _FinishRequest(row, changes, describe))

    def _finish_many(self, session: Session, requests: list[_FinishRequest]) -> list[RunRow]:
        """Ends a batch of runs with one read and one executemany update; runs that already ended, or whose
        lease another executor took, are returned as stored, unchanged and without events."""
        ids = [request.row.id for request in requests]
        core = session.connection()  # Core statements skip the ORM session's per-statement work
        stored = {row.id: RunValues(**row._mapping) for row in core.execute(_READ_RUNS, {"ids": ids})}
        for request in requests:
            if request.row.id not in stored:
                raise not_found(run_name(request.row))
        active = [request for request in requests if _may_finish(stored[request.row.id], request.row)]
        if active:
            result = core.execute(
                _FINISH_RUN,
                [
                    {"run_id": request.row.id, "token": request.row.lease_token}
                    | {f"new_{column}": request.changes[column] for column in FINISH_COLUMNS}
                    for request in active
                ],
            )
            if session.bind.dialect.name != "postgresql" and result.rowcount != len(active):
                raise RuntimeError("a run changed while its batch was being written; retrying one by one")
        results: list[RunRow] = []
        events: list[run_pb2.TraceEvent] = []
        for request in requests:
            row = stored[request.row.id]
            if _may_finish(row, request.row):
                for column, value in request.changes.items():
                    setattr(row, column, value)
                if request.describe is not None:
                    events.extend(request.describe(row))
                self._maybe_trim(session, row)
            results.append(row)
        _store_events(session, events)
        return results

    async def renew_leases(self, runs: dict[str, int]) -> set[str]:
        """Extends the lease of each run (id -> the caller's lease token); returns the ids whose token is no
        longer the caller's (another executor took them over), which it must stop."""
        expires = datetime.now(UTC) + self._lease

        def operation(session: Session) -> set[str]:
            lost = set()
            for run_id, token in runs.items():
                result = session.execute(_RENEW_LEASE, {"run_id": run_id, "token": token, "expires": expires})
                if result.rowcount == 0:
                    lost.add(run_id)
            return lost

        return await self._writes.submit(operation)

    def _maybe_trim(self, session: Session, row: RunRow) -> None:
        """Trims the trigger's history every `trim_every` ended runs, so at most retention + trim_every stay."""
        key = (row.workspace_id, row.trigger_id)
        self._ended[key] = self._ended.get(key, 0) + 1
        if self._ended[key] % self._trim_every == 0:
            self._trim(session, row)

    def _trim(self, session: Session, row: RunRow) -> None:
        """Keeps the newest `retention` runs of the trigger (and their trace events), deleting the rest."""
        oldest_kept = session.scalar(
            select(RunRow.fire_time)
            .where(RunRow.workspace_id == row.workspace_id, RunRow.trigger_id == row.trigger_id)
            .order_by(RunRow.fire_time.desc(), RunRow.id.desc())
            .offset(self._retention - 1)
            .limit(1)
        )
        if oldest_kept is None:
            return
        keep = (
            select(RunRow.id)
            .where(RunRow.workspace_id == row.workspace_id, RunRow.trigger_id == row.trigger_id)
            .order_by(RunRow.fire_time.desc(), RunRow.id.desc())
            .limit(self._retention)
        )
        expired = (
            select(RunRow.fire_id)
            .where(
                RunRow.workspace_id == row.workspace_id,
                RunRow.trigger_id == row.trigger_id,
                RunRow.id.not_in(keep.scalar_subquery()),
            )
            .scalar_subquery()
        )
        session.execute(delete(TraceEventRow).where(TraceEventRow.fire_id.in_(expired)))
        session.execute(
            delete(RunRow).where(
                RunRow.workspace_id == row.workspace_id,
                RunRow.trigger_id == row.trigger_id,
                RunRow.id.not_in(keep.scalar_subquery()),
            )
        )

    async def get(self, name: RunName) -> RunRow:
        async with self._sessions() as session:
            row = await session.get(RunRow, name.run)
        if row is None or (row.workspace_id, row.trigger_id) != (name.workspace, name.trigger):
            raise not_found(str(name))
        return row

    async def cancel(self, name: RunName, describe: DescribeRow | None = None) -> tuple[RunRow, bool]:
        """Marks a pending or running run cancelled; returns it and whether this call ended it."""
        row = await self.get(name)
        if row.status in TERMINAL:
            return row, False
        ended = await self.finish(row, Status.RUN_STATUS_CANCELLED, reason="cancelled by request", describe=describe)
        return ended, ended.status_reason == "cancelled by request" and ended.end_time is not None

    async def trace(self, name: RunName) -> list[TraceEventRow]:
        return await self._fire_events((await self.get(name)).fire_id)

    async def events_of_fire(self, fire_id: str) -> list[run_pb2.TraceEvent]:
        return [event_from_row(row) for row in await self._fire_events(fire_id)]

    async def _fire_events(self, fire_id: str) -> list[TraceEventRow]:
        async with self._sessions() as session:
            query = select(TraceEventRow).where(TraceEventRow.fire_id == fire_id)
            events = list((await session.scalars(query)).all())
        # Events written together can share a timestamp; within one instant, lifecycle order decides.
        return sorted(events, key=lambda event: (event.time, event.attempt, LIFECYCLE_ORDER.get(event.type, 99)))

    async def consecutive_failures(self, workspace: str, trigger_id: str, limit: int) -> int:
        """How many of the trigger's most recent ended runs (at most `limit`) failed in a row."""
        async with self._sessions() as session:
            statuses = (
                await session.scalars(
                    select(RunRow.status)
                    .where(
                        RunRow.workspace_id == workspace,
                        RunRow.trigger_id == trigger_id,
                        RunRow.status.in_(FAILED | {Status.RUN_STATUS_COMPLETED}),
                    )
                    .order_by(RunRow.end_time.desc(), RunRow.id.desc())
                    .limit(limit)
                )
            ).all()
        count = 0
        for status in statuses:
            if status not in FAILED:
                break
            count += 1
        return count

    async def list(
        self,
        workspace: str,
        trigger_id: str | None,
        request,
    ) -> tuple[list[RunRow], str]:
        limit = page_size(request.page_size)
        query = select(RunRow).where(RunRow.workspace_id == workspace)
        if trigger_id:
            query = query.where(RunRow.trigger_id == trigger_id)
        if request.status:
            query = query.where(RunRow.status == request.status)
        if request.HasField("start_time"):
            query = query.where(RunRow.fire_time >= request.start_time.ToDatetime(UTC))
        if request.HasField("end_time"):
            query = query.where(RunRow.fire_time < request.end_time.ToDatetime(UTC))
        if request.page_token:
            fired_at, last_id = decode_instant_token(request.page_token)
            query = query.where(
                (RunRow.fire_time < fired_at) | ((RunRow.fire_time == fired_at) & (RunRow.id < last_id))
            )
        query = query.order_by(RunRow.fire_time.desc(), RunRow.id.desc()).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            token = encode_instant_token(rows[-1].fire_time, rows[-1].id)
        return rows, token
