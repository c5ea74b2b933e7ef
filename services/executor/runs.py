"""The run history: one row per fire id, read and written in short transactions."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kairos.core.errors import invalid_argument, not_found
from kairos.core.names import RunName, new_id, parse_trigger
from kairos.executor.models import RunRow
from kairos.v1 import fire_pb2, run_pb2

Status = run_pb2.RunStatus
TERMINAL = {
    Status.RUN_STATUS_COMPLETED,
    Status.RUN_STATUS_FAILED,
    Status.RUN_STATUS_CANCELLED,
    Status.RUN_STATUS_TIMED_OUT,
    Status.RUN_STATUS_SKIPPED,
}
MAX_PAGE_SIZE = 1000


def run_name(row: RunRow) -> str:
    return str(RunName(row.workspace_id, row.trigger_id, row.id))


def to_proto(row: RunRow) -> run_pb2.Run:
    run = run_pb2.Run(
        name=run_name(row),
        trigger=f"workspaces/{row.workspace_id}/triggers/{row.trigger_id}",
        trigger_type=row.trigger_type,
        status=row.status,
        status_reason=row.status_reason,
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
    for field in ("scheduled_time", "fire_time", "start_time", "end_time"):
        instant = getattr(row, field)
        if instant is not None:
            getattr(run, field).FromDatetime(instant)
    run.input.update(json.loads(row.input_json))
    json_format.ParseDict(json.loads(row.output_json), run.output)
    json_format.ParseDict(json.loads(row.payload_json), run.payload)
    return run


def value_to_python(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value) if value.WhichOneof("kind") else None


class RunStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], retention: int) -> None:
        self._sessions = sessions
        self._retention = retention

    async def begin(self, fire: fire_pb2.FireRequest, run_input: dict[str, Any]) -> RunRow | None:
        """Records the run of a fire, or resumes the one a crashed executor left running.
        Returns None when the fire's run already ended: the fire is a duplicate."""
        trigger = parse_trigger(fire.trigger, "trigger")
        now = datetime.now(UTC)
        row = RunRow(
            id=new_id("r"),
            workspace_id=trigger.workspace,
            trigger_id=trigger.trigger,
            fire_id=fire.fire_id,
            trigger_type=fire.trigger_type,
            status=Status.RUN_STATUS_RUNNING,
            attempt=1,
            scheduled_time=fire.scheduled_time.ToDatetime(UTC) if fire.HasField("scheduled_time") else None,
            fire_time=fire.fire_time.ToDatetime(UTC) if fire.HasField("fire_time") else now,
            start_time=now,
            input_json=json.dumps(run_input),
            payload_json=json.dumps(value_to_python(fire.payload)),
            agent=fire.action.agent,
            agent_version=fire.action.agent_version,
            owner=fire.action.owner,
            webhook=fire.webhook,
            event_type=fire.event_type,
        )
        async with self._sessions() as session:
            session.add(row)
            try:
                await session.commit()
                return row
            except IntegrityError:
                await session.rollback()
            existing = await session.scalar(select(RunRow).where(RunRow.fire_id == fire.fire_id))
            if existing is None or existing.status in TERMINAL:
                return None
            existing.attempt += 1
            existing.status = Status.RUN_STATUS_RUNNING
            await session.commit()
            return existing

    async def finish(self, row: RunRow, status: int, output: Any = None, error: str = "", reason: str = "") -> RunRow:
        now = datetime.now(UTC)
        async with self._sessions() as session:
            stored = await session.get(RunRow, row.id)
            if stored is None:
                raise not_found(run_name(row))
            if stored.status in TERMINAL:
                return stored
            stored.status = status
            stored.status_reason = reason
            stored.end_time = now
            stored.duration_ms = int((now - (stored.start_time or now)).total_seconds() * 1000)
            stored.output_json = json.dumps(output)
            stored.error_message = error
            await session.commit()
            await self._trim(session, stored)
            return stored

    async def _trim(self, session: AsyncSession, row: RunRow) -> None:
        keep = (
            select(RunRow.id)
            .where(RunRow.workspace_id == row.workspace_id, RunRow.trigger_id == row.trigger_id)
            .order_by(RunRow.fire_time.desc(), RunRow.id.desc())
            .limit(self._retention)
        )
        await session.execute(
            delete(RunRow).where(
                RunRow.workspace_id == row.workspace_id,
                RunRow.trigger_id == row.trigger_id,
                RunRow.id.not_in(keep.scalar_subquery()),
            )
        )
        await session.commit()

    async def get(self, name: RunName) -> RunRow:
        async with self._sessions() as session:
            row = await session.get(RunRow, name.run)
        if row is None or (row.workspace_id, row.trigger_id) != (name.workspace, name.trigger):
            raise not_found(str(name))
        return row

    async def cancel(self, name: RunName) -> RunRow:
        row = await self.get(name)
        return await self.finish(row, Status.RUN_STATUS_CANCELLED, reason="cancelled by request")

    async def list(
        self,
        workspace: str,
        trigger_id: str | None,
        request,
    ) -> tuple[list[RunRow], str]:
        if request.page_size < 0:
            raise invalid_argument("INVALID_PAGE_SIZE", "page_size", "must not be negative")
        limit = min(request.page_size or 50, MAX_PAGE_SIZE)
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
            try:
                fired, last_id = base64.urlsafe_b64decode(request.page_token).decode().split("|")
                fired_at = datetime.fromisoformat(fired)
            except ValueError:
                raise invalid_argument(
                    "INVALID_PAGE_TOKEN", "page_token", "is not a token this service issued"
                ) from None
            query = query.where(
                (RunRow.fire_time < fired_at) | ((RunRow.fire_time == fired_at) & (RunRow.id < last_id))
            )
        query = query.order_by(RunRow.fire_time.desc(), RunRow.id.desc()).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            token = base64.urlsafe_b64encode(f"{rows[-1].fire_time.isoformat()}|{rows[-1].id}".encode()).decode()
        return rows, token
