"""Standard Webhooks signing secrets issued by the registry: shown once as `whsec_<base64>`, stored and fed to the
ingress only sealed under KAIROS_SECRET_KEY (bound to the webhook's name), rotatable with an overlap, and refused
with FAILED_PRECONDITION when the operator configured no secret key. Runs the suite in-process (real gRPC, NATS,
SQLite and PostgreSQL) and reads what the ingress would read from the `kairos_webhooks` change-feed bucket."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook as StandardWebhook

from kairos.client import KairosClient, error_details, webhook_trigger
from kairos.core import db
from kairos.core.sealing import Sealer, SealingError
from kairos.devtools.suite import Suite, running_suite
from kairos.registry.models import WebhookCredentialRow
from kairos.v1 import feed_pb2, trigger_service_pb2, webhook_pb2, webhook_service_pb2

FEED_TIMEOUT_S = 5.0
STANDARD_WEBHOOKS = webhook_pb2.WebhookAuthMode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS


@pytest_asyncio.fixture
async def registry(tmp_path: Path, database_url: str) -> AsyncIterator[Suite]:
    """The registry alone (with a random KAIROS_SECRET_KEY), on SQLite and on PostgreSQL."""
    async with running_suite(tmp_path, database_url, ("registry",)) as running:
        yield running


def signing_key_of(secret: str) -> bytes:
    """The raw key a `whsec_` secret stands for, decoded the way the standardwebhooks library decodes it."""
    assert secret.startswith("whsec_")
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


async def create_signed_webhook(kairos: KairosClient) -> webhook_service_pb2.CreateWebhookResponse:
    trigger = (
        await kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger()))
    ).trigger
    return await kairos.webhooks.CreateWebhook(
        webhook_service_pb2.CreateWebhookRequest(
            webhook=webhook_pb2.Webhook(trigger=trigger.name, auth_mode=STANDARD_WEBHOOKS)
        )
    )


async def fed_record(suite: Suite, webhook_name: str, revision: int) -> feed_pb2.WebhookRecord:
    """The webhook's change-feed record once it has reached `revision` (the registry flushes before answering)."""
    bucket = suite.runtime.buckets.webhooks
    key = webhook_name.rsplit("/", 1)[1]
    async with asyncio.timeout(FEED_TIMEOUT_S):
        watcher = await bucket.watch(key)
        try:
            async for entry in watcher:
                if entry is not None and entry.value:
                    record = feed_pb2.WebhookRecord.FromString(entry.value)
                    if record.revision >= revision:
                        return record
        finally:
            await watcher.stop()
    raise AssertionError("unreachable")


def hmac_of(key: bytes, message_id: str, timestamp: datetime, body: str) -> str:
    signed = f"{message_id}.{int(timestamp.timestamp())}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


async def test_signing_secret_is_shown_once_and_fed_sealed(registry: Suite, database_url: str) -> None:
    suite = registry
    key = await suite.new_workspace("signed")
    sealer = Sealer(suite.runtime.config.secret_key)
    async with suite.client(key) as kairos:
        created = await create_signed_webhook(kairos)
        webhook, secret = created.webhook, created.secret
        assert webhook.auth_mode == STANDARD_WEBHOOKS
        signing_key = signing_key_of(secret)
        assert len(signing_key) == 24
        assert [s.hint for s in webhook.secrets] == [secret[-4:]]

        # a sender using the standardwebhooks library with this secret produces the signature the key gives
        sent_at = datetime.now(UTC)
        body = '{"type": "lead.created"}'
        assert StandardWebhook(secret).sign("msg_1", sent_at, body) == hmac_of(signing_key, "msg_1", sent_at, body)

        # the secret is never shown again
        fetched = (await kairos.webhooks.GetWebhook(webhook_service_pb2.GetWebhookRequest(name=webhook.name))).webhook
        for shown in (fetched.SerializeToString(), webhook.SerializeToString()):
            assert secret.encode() not in shown and signing_key not in shown

        # the feed carries the key sealed, not the secret; it opens only with the webhook's name as context
        record = await fed_record(suite, webhook.name, revision=1)
        (credential,) = record.credentials
        assert credential.digest == b"" and credential.sealed_signing_key
        assert signing_key not in credential.sealed_signing_key and secret.encode() not in record.SerializeToString()
        assert sealer.open(credential.sealed_signing_key, webhook.name) == signing_key
        with pytest.raises(SealingError):
            sealer.open(credential.sealed_signing_key, webhook.name + "x")

        # the database stores the same sealed value and no digest
        engine = db.create_engine(database_url)
        try:
            async with db.session_factory(engine)() as session:
                (stored,) = (await session.scalars(select(WebhookCredentialRow))).all()
        finally:
            await engine.dispose()
        assert stored.digest == b"" and sealer.open(stored.sealed_signing_key, webhook.name) == signing_key

        # rotation with grace: the old key stays fed (with its expiry) beside the new one, both open
        started = datetime.now(UTC)
        rotated = await kairos.webhooks.RotateWebhookSecret(
            webhook_service_pb2.RotateWebhookSecretRequest(
                name=webhook.name, grace_period=duration_pb2.Duration(seconds=3600)
            )
        )
        second_key = signing_key_of(rotated.secret)
        assert second_key != signing_key and rotated.webhook.etag != webhook.etag
        record = await fed_record(suite, webhook.name, revision=2)
        old, new = record.credentials
        assert old.id == credential.id and old.HasField("expire_time") and not new.HasField("expire_time")
        assert started + timedelta(hours=1) <= old.expire_time.ToDatetime(UTC) <= datetime.now(UTC) + timedelta(hours=1)
        assert sealer.open(old.sealed_signing_key, webhook.name) == signing_key
        assert sealer.open(new.sealed_signing_key, webhook.name) == second_key

        # rotation without grace: only the newest key is fed
        revoked = await kairos.webhooks.RotateWebhookSecret(
            webhook_service_pb2.RotateWebhookSecretRequest(name=webhook.name)
        )
        record = await fed_record(suite, webhook.name, revision=3)
        (only,) = record.credentials
        assert sealer.open(only.sealed_signing_key, webhook.name) == signing_key_of(revoked.secret)


async def test_signing_secrets_need_a_secret_key(tmp_path: Path) -> None:
    async with running_suite(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'kairos.db'}", ("registry",), env={"KAIROS_SECRET_KEY": ""}
    ) as suite:
        key = await suite.new_workspace("unsealed")
        async with suite.client(key) as kairos:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await create_signed_webhook(kairos)
            details = error_details(raised.value)
            assert details.code == grpc.StatusCode.FAILED_PRECONDITION
            assert details.reason == "SECRET_KEY_NOT_CONFIGURED"
            listed = await kairos.webhooks.ListWebhooks(webhook_service_pb2.ListWebhooksRequest())
            assert not listed.webhooks
