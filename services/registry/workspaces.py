"""Workspaces, their API keys and their signing secrets. A key is shown once; the registry keeps its SHA-256 digest
and feeds it to every service so each can authenticate callers on its own. A signing secret is shown once too, and
stored and fed to the executor only sealed (AES-GCM under KAIROS_SECRET_KEY, bound to the workspace's name): the
executor signs the workspace's outgoing requests with it."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import duration_pb2, field_mask_pb2
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kairos.core import secrets
from kairos.core.errors import KairosError, aborted, invalid_argument, not_found
from kairos.core.names import WORKSPACE_ID, new_id
from kairos.core.sealing import Sealer
from kairos.registry import outbox
from kairos.registry.models import ApiKeyRow, WorkspaceRow, WorkspaceSigningKeyRow
from kairos.registry.triggers import check_update_mask, page_by_id, timestamp
from kairos.registry.webhooks import grace_period_of, new_signing_key, secret_key_not_configured
from kairos.v1 import feed_pb2, workspace_pb2

UPDATABLE_WORKSPACE_PATHS = (
    "display_name",
    "quota",
    "quota.max_schedule_triggers",
    "quota.max_webhook_event_triggers",
    "quota.max_concurrent_runs",
)


def _workspace_view(row: WorkspaceRow) -> workspace_pb2.Workspace:
    return workspace_pb2.Workspace(
        name=f"workspaces/{row.id}",
        display_name=row.display_name,
        quota=workspace_pb2.WorkspaceQuota(
            max_schedule_triggers=row.max_schedule_triggers,
            max_webhook_event_triggers=row.max_webhook_event_triggers,
            max_concurrent_runs=row.max_concurrent_runs,
        ),
        create_time=timestamp(row.create_time),
        etag=str(row.revision),
    )


def _key_view(row: ApiKeyRow) -> workspace_pb2.ApiKey:
    key = workspace_pb2.ApiKey(
        name=f"workspaces/{row.workspace_id}/apiKeys/{row.id}",
        display_name=row.display_name,
        prefix=row.prefix,
        create_time=timestamp(row.create_time),
    )
    if row.expire_time is not None:
        key.expire_time.CopyFrom(timestamp(row.expire_time))
    return key


class WorkspaceRegistry:
    """The domain operations behind WorkspaceService."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], relay: outbox.OutboxRelay, sealer: Sealer | None = None
    ) -> None:
        self._sessions = sessions
        self._relay = relay
        self._sealer = sealer

    async def create_workspace(self, draft: workspace_pb2.Workspace) -> workspace_pb2.Workspace:
        workspace_id = draft.name.removeprefix("workspaces/")
        if not draft.name.startswith("workspaces/") or not WORKSPACE_ID.match(workspace_id):
            raise invalid_argument(
                "INVALID_WORKSPACE_NAME",
                "workspace.name",
                "must be workspaces/{id}: 2 to 63 lowercase letters, digits or dashes, starting with a letter",
            )
        if len(draft.display_name) > 200:
            raise invalid_argument("FIELD_TOO_LONG", "workspace.display_name", "must be at most 200 characters")
        row = WorkspaceRow(
            id=workspace_id,
            display_name=draft.display_name,
            max_schedule_triggers=max(draft.quota.max_schedule_triggers, 0),
            max_webhook_event_triggers=max(draft.quota.max_webhook_event_triggers, 0),
            max_concurrent_runs=max(draft.quota.max_concurrent_runs, 0),
            create_time=datetime.now(UTC),
        )
        async with self._sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                raise KairosError(
                    grpc.StatusCode.ALREADY_EXISTS, "WORKSPACE_EXISTS", f"{draft.name} already exists"
                ) from None
        return _workspace_view(row)

    async def get_workspace(self, workspace_id: str) -> workspace_pb2.Workspace:
        async with self._sessions() as session:
            row = await session.get(WorkspaceRow, workspace_id)
        if row is None:
            raise not_found(f"workspaces/{workspace_id}")
        return _workspace_view(row)

    async def list_workspaces(self, size: int, token: str) -> tuple[list[workspace_pb2.Workspace], str]:
        async with self._sessions() as session:
            rows, next_token = await page_by_id(session, select(WorkspaceRow), WorkspaceRow.id, size, token)
        return [_workspace_view(row) for row in rows], next_token

    async def update_workspace(
        self, workspace_id: str, patch: workspace_pb2.Workspace, mask: field_mask_pb2.FieldMask
    ) -> workspace_pb2.Workspace:
        """Changes the display name and quotas. A quota lowered below the current count refuses further creates
        of that kind; existing triggers stay."""
        check_update_mask(mask, UPDATABLE_WORKSPACE_PATHS, whole_fields=False)
        async with self._sessions() as session:
            row = await session.get(WorkspaceRow, workspace_id)
            if row is None:
                raise not_found(f"workspaces/{workspace_id}")
            workspace = _workspace_view(row)
            if patch.etag and patch.etag != workspace.etag:
                raise aborted(
                    "ETAG_MISMATCH",
                    f"workspaces/{workspace_id} has changed (etag {workspace.etag}, request had {patch.etag})",
                )
            mask.MergeMessage(patch, workspace, replace_message_field=True)
            if len(workspace.display_name) > 200:
                raise invalid_argument("FIELD_TOO_LONG", "workspace.display_name", "must be at most 200 characters")
            for field in workspace_pb2.WorkspaceQuota.DESCRIPTOR.fields:
                if getattr(workspace.quota, field.name) < 0:
                    raise invalid_argument(
                        "INVALID_QUOTA", f"workspace.quota.{field.name}", "must not be negative (0 means the default)"
                    )
            row.display_name = workspace.display_name
            row.max_schedule_triggers = workspace.quota.max_schedule_triggers
            row.max_webhook_event_triggers = workspace.quota.max_webhook_event_triggers
            row.max_concurrent_runs = workspace.quota.max_concurrent_runs
            row.revision += 1
            await session.commit()
        return _workspace_view(row)

    async def ensure_workspace(self, workspace_id: str, display_name: str) -> None:
        async with self._sessions() as session:
            if await session.get(WorkspaceRow, workspace_id) is None:
                session.add(WorkspaceRow(id=workspace_id, display_name=display_name, create_time=datetime.now(UTC)))
                await session.commit()

    async def create_api_key(self, workspace_id: str, draft: workspace_pb2.ApiKey) -> tuple[workspace_pb2.ApiKey, str]:
        if len(draft.display_name) > 200:
            raise invalid_argument("FIELD_TOO_LONG", "api_key.display_name", "must be at most 200 characters")
        key_id = new_id("k").removeprefix("k_")
        key = secrets.new_api_key(key_id)
        now = datetime.now(UTC)
        expire = draft.expire_time.ToDatetime(UTC) if draft.HasField("expire_time") else None
        if expire is not None and expire <= now:
            raise invalid_argument("INVALID_EXPIRE_TIME", "api_key.expire_time", "must be in the future")
        row = ApiKeyRow(
            id=key_id,
            workspace_id=workspace_id,
            display_name=draft.display_name,
            prefix=key[: len("kairos_") + 10],
            digest=secrets.digest(key),
            create_time=now,
            expire_time=expire,
        )
        view = _key_view(row)
        record = feed_pb2.ApiKeyRecord(name=view.name, digest=row.digest)
        if expire is not None:
            record.expire_time.CopyFrom(view.expire_time)
        async with self._sessions() as session:
            if await session.get(WorkspaceRow, workspace_id) is None:
                raise not_found(f"workspaces/{workspace_id}")
            session.add(row)
            outbox.stage(session, outbox.API_KEYS, key_id, record.SerializeToString())
            await session.commit()
        await self._relay.flush_soon()
        return view, key

    async def list_api_keys(self, workspace_id: str, size: int, token: str) -> tuple[list[workspace_pb2.ApiKey], str]:
        query = select(ApiKeyRow).where(ApiKeyRow.workspace_id == workspace_id)
        async with self._sessions() as session:
            rows, next_token = await page_by_id(session, query, ApiKeyRow.id, size, token)
        return [_key_view(row) for row in rows], next_token

    async def delete_api_key(self, workspace_id: str, key_id: str) -> None:
        async with self._sessions() as session:
            row = await session.get(ApiKeyRow, key_id)
            if row is None or row.workspace_id != workspace_id:
                raise not_found(f"workspaces/{workspace_id}/apiKeys/{key_id}")
            await session.delete(row)
            outbox.stage(session, outbox.API_KEYS, key_id, None)
            await session.commit()
        await self._relay.flush_soon()

    async def rotate_signing_secret(self, workspace_id: str, grace: duration_pb2.Duration) -> str:
        """A new signing key for the workspace's outgoing requests, returned as `whsec_<base64>` this once. The
        current keys keep signing (a second signature) for `grace`, or stop now."""
        grace_period = grace_period_of(grace)
        if self._sealer is None:
            raise secret_key_not_configured(
                "signing secrets are encrypted at rest; the operator must set KAIROS_SECRET_KEY"
            )
        name = f"workspaces/{workspace_id}"
        key, secret = new_signing_key()
        now = datetime.now(UTC)
        async with self._sessions() as session:
            if await session.get(WorkspaceRow, workspace_id) is None:
                raise not_found(name)
            current = (
                await session.scalars(
                    select(WorkspaceSigningKeyRow).where(WorkspaceSigningKeyRow.workspace_id == workspace_id)
                )
            ).all()
            kept = []
            for row in current:
                if grace_period and (row.expire_time is None or row.expire_time > now):
                    row.expire_time = min(row.expire_time or now + grace_period, now + grace_period)
                    kept.append(row)
                else:
                    await session.delete(row)
            new = WorkspaceSigningKeyRow(
                id=new_id("sk"),
                workspace_id=workspace_id,
                sealed_key=self._sealer.seal(key, context=name),
                create_time=now,
            )
            session.add(new)
            record = feed_pb2.WorkspaceRecord(name=name)
            for row in [*sorted(kept, key=lambda row: row.create_time), new]:
                fed = record.signing_keys.add(id=row.id, sealed_key=row.sealed_key)
                if row.expire_time is not None:
                    fed.expire_time.CopyFrom(timestamp(row.expire_time))
            outbox.stage(session, outbox.WORKSPACES, workspace_id, record.SerializeToString())
            await session.commit()
        await self._relay.flush_soon()
        return secret
