"""Webhook lifecycle and secrets. Secrets are shown once. Bearer tokens and shared secrets are stored and fed
to the ingress as SHA-256 digests; Standard Webhooks signing keys, which the ingress must use for HMAC, are
stored and fed sealed (AES-GCM under KAIROS_SECRET_KEY, bound to the webhook's name)."""

from __future__ import annotations

import base64
import secrets as random_source
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import duration_pb2, field_mask_pb2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kairos.core import secrets
from kairos.core.errors import KairosError, aborted, invalid_argument, not_found
from kairos.core.names import TriggerName, WebhookName, new_id, parse_trigger
from kairos.core.sealing import Sealer
from kairos.registry import outbox
from kairos.registry.models import TriggerRow, WebhookCredentialRow, WebhookRow
from kairos.registry.triggers import check_update_mask, page_by_id, timestamp
from kairos.registry.validation import validate_webhook
from kairos.v1 import feed_pb2, trigger_pb2, webhook_pb2

Mode = webhook_pb2.WebhookAuthMode
SECRET_PREFIXES = {
    Mode.WEBHOOK_AUTH_MODE_BEARER_TOKEN: "whk",
    Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER: "whs",
}
UPDATABLE_PATHS = ("display_name", "owner", "disabled", "accepted_event_types", "field_mapping", "rate_limit")
MAX_GRACE = timedelta(days=30)
SIGNING_SECRET_PREFIX = "whsec_"
SIGNING_KEY_BYTES = 24


def grace_period_of(grace: duration_pb2.Duration) -> timedelta:
    """How long a rotation keeps the current secrets: INVALID_GRACE_PERIOD outside 0 to MAX_GRACE."""
    grace_period = grace.ToTimedelta()
    if grace_period < timedelta(0) or grace_period > MAX_GRACE:
        raise invalid_argument("INVALID_GRACE_PERIOD", "grace_period", "must be between 0 and 30 days")
    return grace_period


def secret_key_not_configured(message: str) -> KairosError:
    """FAILED_PRECONDITION for a signing secret asked for where the operator set no KAIROS_SECRET_KEY to seal it."""
    return KairosError(grpc.StatusCode.FAILED_PRECONDITION, "SECRET_KEY_NOT_CONFIGURED", message)


def new_signing_key() -> tuple[bytes, str]:
    """A random Standard Webhooks signing key and its `whsec_<base64>` form (what senders configure)."""
    key = random_source.token_bytes(SIGNING_KEY_BYTES)
    return key, SIGNING_SECRET_PREFIX + base64.b64encode(key).decode()


class WebhookRegistry:
    """The domain operations behind WebhookService."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], relay: outbox.OutboxRelay, sealer: Sealer | None = None
    ) -> None:
        self._sessions = sessions
        self._relay = relay
        self._sealer = sealer

    async def _row(self, session: AsyncSession, name: WebhookName) -> WebhookRow:
        row = await session.get(WebhookRow, name.webhook)
        if row is None or row.workspace_id != name.workspace:
            raise not_found(str(name))
        return row

    async def _view(self, session: AsyncSession, row: WebhookRow, *, publish: bool = False) -> webhook_pb2.Webhook:
        """The webhook with its secrets' metadata; with `publish`, also stages its record for the change feed."""
        webhook = webhook_pb2.Webhook.FromString(row.body)
        credentials = (
            await session.scalars(
                select(WebhookCredentialRow)
                .where(WebhookCredentialRow.webhook_id == row.id)
                .order_by(WebhookCredentialRow.create_time)
            )
        ).all()
        record = feed_pb2.WebhookRecord(webhook=webhook, revision=row.revision)
        for credential in credentials:
            info = webhook.secrets.add(id=credential.id, hint=credential.hint)
            info.create_time.CopyFrom(timestamp(credential.create_time))
            fed = record.credentials.add(
                id=credential.id, digest=credential.digest, sealed_signing_key=credential.sealed_signing_key
            )
            if credential.expire_time is not None:
                info.expire_time.CopyFrom(timestamp(credential.expire_time))
                fed.expire_time.CopyFrom(info.expire_time)
        if publish:
            record.webhook.CopyFrom(webhook)
            outbox.stage(session, outbox.WEBHOOKS, row.id, record.SerializeToString())
        return webhook

    def _new_credential(self, name: WebhookName, mode: int, now: datetime) -> tuple[WebhookCredentialRow, str]:
        row = WebhookCredentialRow(id=new_id("sec"), webhook_id=name.webhook, create_time=now)
        if mode == Mode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS:
            if self._sealer is None:
                raise secret_key_not_configured(
                    "webhook.auth_mode: Standard Webhooks signing secrets are encrypted at rest; the operator must "
                    "set KAIROS_SECRET_KEY (or use BEARER_TOKEN or SHARED_SECRET_HEADER)"
                )
            key, secret = new_signing_key()
            row.digest = b""
            row.sealed_signing_key = self._sealer.seal(key, context=str(name))
        elif mode in SECRET_PREFIXES:
            secret = secrets.new_secret(SECRET_PREFIXES[mode])
            row.digest = secrets.digest(secret)
            row.sealed_signing_key = b""
        else:
            raise invalid_argument("INVALID_AUTH_MODE", "webhook.auth_mode", f"unknown auth mode {mode}")
        row.hint = secret[-4:]
        return row, secret

    async def create(
        self, workspace_id: str, draft: webhook_pb2.Webhook, request_id: str
    ) -> tuple[webhook_pb2.Webhook, str]:
        if len(request_id) > 128:
            raise invalid_argument("INVALID_REQUEST_ID", "request_id", "must be at most 128 characters")
        validate_webhook(draft)
        if not draft.trigger:
            raise invalid_argument("MISSING_TRIGGER", "webhook.trigger", "name the trigger the webhook fires")
        trigger_name = parse_trigger(draft.trigger, "webhook.trigger")
        if trigger_name.workspace != workspace_id:
            raise not_found(draft.trigger)
        async with self._sessions() as session:
            if request_id:
                existing = await session.scalar(
                    select(WebhookRow).where(
                        WebhookRow.workspace_id == workspace_id, WebhookRow.request_id == request_id
                    )
                )
                if existing is not None:
                    raise aborted(
                        "ALREADY_CREATED",
                        f"request_id {request_id!r} already created {WebhookName(workspace_id, existing.id)}; its "
                        "secret was shown once; rotate it with RotateWebhookSecret",
                    )
            trigger_row = await session.get(TriggerRow, trigger_name.trigger)
            if trigger_row is None or trigger_row.workspace_id != workspace_id:
                raise not_found(draft.trigger)
            trigger = trigger_pb2.Trigger.FromString(trigger_row.body)
            if not trigger.source.HasField("webhook"):
                raise invalid_argument("TRIGGER_NOT_WEBHOOK", "webhook.trigger", "the trigger's source must be webhook")
            now = datetime.now(UTC)
            webhook_id = new_id("wh")
            webhook = webhook_pb2.Webhook()
            webhook.CopyFrom(draft)
            webhook.name = str(WebhookName(workspace_id, webhook_id))
            webhook.auth_mode = webhook.auth_mode or Mode.WEBHOOK_AUTH_MODE_BEARER_TOKEN
            webhook.path = f"/hooks/{webhook_id}"
            webhook.ClearField("secrets")
            webhook.etag = "1"
            webhook.create_time.CopyFrom(timestamp(now))
            webhook.update_time.CopyFrom(timestamp(now))
            row = WebhookRow(
                id=webhook_id,
                workspace_id=workspace_id,
                trigger_id=trigger_name.trigger,
                request_id=request_id or None,
                body=webhook.SerializeToString(),
                create_time=now,
                update_time=now,
            )
            credential, secret = self._new_credential(WebhookName(workspace_id, webhook_id), webhook.auth_mode, now)
            session.add(row)
            await session.flush()
            session.add(credential)
            await session.flush()
            trigger.source.webhook.webhooks.append(webhook.name)
            trigger_row.body = trigger.SerializeToString()
            outbox.stage(session, outbox.TRIGGERS, f"{workspace_id}.{trigger_row.id}", trigger_row.body)
            view = await self._view(session, row, publish=True)
            await session.commit()
        await self._relay.flush_soon()
        return view, secret

    async def get(self, name: WebhookName) -> webhook_pb2.Webhook:
        async with self._sessions() as session:
            return await self._view(session, await self._row(session, name))

    async def list(self, workspace_id: str, size: int, token: str, trigger: str) -> tuple[list, str]:
        query = select(WebhookRow).where(WebhookRow.workspace_id == workspace_id)
        if trigger:
            query = query.where(WebhookRow.trigger_id == parse_trigger(trigger, "trigger").trigger)
        async with self._sessions() as session:
            rows, next_token = await page_by_id(session, query, WebhookRow.id, size, token)
            views = [await self._view(session, row) for row in rows]
        return views, next_token

    async def update(self, name: WebhookName, patch: webhook_pb2.Webhook, mask: field_mask_pb2.FieldMask):
        check_update_mask(mask, UPDATABLE_PATHS)
        async with self._sessions() as session:
            row = await self._row(session, name)
            webhook = webhook_pb2.Webhook.FromString(row.body)
            if patch.etag and patch.etag != webhook.etag:
                raise aborted("ETAG_MISMATCH", f"{name} has changed (etag {webhook.etag}, request had {patch.etag})")
            mask.MergeMessage(patch, webhook, replace_message_field=True, replace_repeated_field=True)
            validate_webhook(webhook)
            row.revision += 1
            webhook.etag = str(row.revision)
            now = datetime.now(UTC)
            webhook.update_time.CopyFrom(timestamp(now))
            row.body = webhook.SerializeToString()
            row.update_time = now
            view = await self._view(session, row, publish=True)
            await session.commit()
        await self._relay.flush_soon()
        return view

    async def delete(self, name: WebhookName) -> None:
        async with self._sessions() as session:
            row = await self._row(session, name)
            trigger_row = await session.get(TriggerRow, row.trigger_id)
            if trigger_row is not None:
                trigger = trigger_pb2.Trigger.FromString(trigger_row.body)
                remaining = [w for w in trigger.source.webhook.webhooks if w != str(name)]
                del trigger.source.webhook.webhooks[:]
                trigger.source.webhook.webhooks.extend(remaining)
                trigger_row.body = trigger.SerializeToString()
                outbox.stage(session, outbox.TRIGGERS, f"{row.workspace_id}.{trigger_row.id}", trigger_row.body)
            outbox.stage(session, outbox.WEBHOOKS, row.id, None)
            await session.delete(row)
            await session.commit()
        await self._relay.flush_soon()

    async def rotate(self, name: WebhookName, grace: duration_pb2.Duration) -> tuple[webhook_pb2.Webhook, str]:
        grace_period = grace_period_of(grace)
        async with self._sessions() as session:
            row = await self._row(session, name)
            webhook = webhook_pb2.Webhook.FromString(row.body)
            now = datetime.now(UTC)
            current = (
                await session.scalars(select(WebhookCredentialRow).where(WebhookCredentialRow.webhook_id == row.id))
            ).all()
            for credential in current:
                if grace_period:
                    expiry = now + grace_period
                    credential.expire_time = min(credential.expire_time or expiry, expiry)
                else:
                    await session.delete(credential)
            credential, secret = self._new_credential(name, webhook.auth_mode, now)
            session.add(credential)
            row.revision += 1
            webhook.etag = str(row.revision)
            webhook.update_time.CopyFrom(timestamp(now))
            row.body = webhook.SerializeToString()
            row.update_time = now
            await session.flush()
            view = await self._view(session, row, publish=True)
            await session.commit()
        await self._relay.flush_soon()
        return view, secret


def trigger_of(webhook: webhook_pb2.Webhook) -> TriggerName:
    return parse_trigger(webhook.trigger, "webhook.trigger")
