"""The registry's change feed as the scheduler and ingress see it: a `KvMirror` of the `kairos_triggers` bucket.

- Every create, update, pause, resume and delete reaches a mirror within a second of the RPC's answer.
- A change committed while NATS is unreachable survives the registry being SIGKILLed before it could publish:
  the registry runs as its own process (`python -m kairos.registry`) against a nats-server the test stops,
  kills and restarts; after NATS and the registry come back, the trigger appears in the bucket.

Every wait is on the mirror (or the gRPC health check), bounded by `asyncio.timeout`; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import nats.js.errors
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2

from kairos.client import KairosClient, schedule_trigger
from kairos.core import messaging
from kairos.core.feed import KvMirror
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.devtools.processes import ServiceProcesses
from kairos.devtools.suite import Suite, running_suite
from kairos.v1 import trigger_pb2, trigger_service_pb2, workspace_pb2, workspace_service_pb2

# The issue promises that watchers learn of a change "within a second". The registry publishes before it answers,
# so a mirror normally has the change a few milliseconds after the answer; the bound is the promise itself,
# counted from the answer, which leaves scheduling noise on a loaded 2-core machine far inside it.
FEED_BOUND_S = 1.0
PROCESS_TIMEOUT_S = 60.0
State = trigger_pb2.TriggerState


def feed_key(trigger_name: str) -> str:
    """`workspaces/{ws}/triggers/{id}` -> the bucket key `{ws}.{id}`."""
    _, workspace, _, trigger_id = trigger_name.split("/")
    return f"{workspace}.{trigger_id}"


@pytest_asyncio.fixture
async def registry(tmp_path: Path, database_url: str) -> AsyncIterator[Suite]:
    async with running_suite(tmp_path, database_url, ("registry",)) as running:
        yield running


@pytest_asyncio.fixture
async def trigger_mirror(registry: Suite) -> AsyncIterator[KvMirror[trigger_pb2.Trigger]]:
    mirror: KvMirror[trigger_pb2.Trigger] = KvMirror(registry.runtime.buckets.triggers, trigger_pb2.Trigger)
    await mirror.start()
    try:
        yield mirror
    finally:
        await mirror.stop()


async def test_every_change_reaches_a_mirror_within_a_second(
    registry: Suite, trigger_mirror: KvMirror[trigger_pb2.Trigger]
) -> None:
    key = await registry.new_workspace("feed")
    async with registry.client(key) as kairos:
        triggers = kairos.triggers

        async def reaches_mirror(name: str, predicate) -> trigger_pb2.Trigger | None:
            async with asyncio.timeout(FEED_BOUND_S):
                return await trigger_mirror.wait_until(feed_key(name), predicate)

        created = (
            await triggers.CreateTrigger(
                trigger_service_pb2.CreateTriggerRequest(trigger=schedule_trigger(cron="0 9 * * *"))
            )
        ).trigger
        fed = await reaches_mirror(created.name, lambda t: t is not None)
        assert fed.name == created.name and fed.state == State.TRIGGER_STATE_ACTIVE and fed.revision == 1

        await triggers.UpdateTrigger(
            trigger_service_pb2.UpdateTriggerRequest(
                trigger=trigger_pb2.Trigger(name=created.name, display_name="renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
        fed = await reaches_mirror(created.name, lambda t: t is not None and t.display_name == "renamed")
        assert fed.revision == 2

        await triggers.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(name=created.name, note="holiday"))
        fed = await reaches_mirror(created.name, lambda t: t is not None and t.state == State.TRIGGER_STATE_PAUSED)
        assert fed.state_note == "holiday" and fed.revision == 3

        await triggers.ResumeTrigger(trigger_service_pb2.ResumeTriggerRequest(name=created.name))
        fed = await reaches_mirror(created.name, lambda t: t is not None and t.state == State.TRIGGER_STATE_ACTIVE)
        assert fed.revision == 4

        await triggers.DeleteTrigger(trigger_service_pb2.DeleteTriggerRequest(name=created.name))
        assert await reaches_mirror(created.name, lambda t: t is None) is None


# ------------------------------------------------------------------------------ the registry as a process


async def test_a_change_committed_while_nats_is_down_survives_a_registry_kill(tmp_path: Path) -> None:
    admin_key = secrets.token_urlsafe(24)
    async with AsyncExitStack() as stack:
        nats_server = EmbeddedNatsServer(tmp_path / "nats")
        await nats_server.start()
        stack.push_async_callback(nats_server.stop)
        launched = await stack.enter_async_context(
            ServiceProcesses(
                tmp_path / "logs",
                {
                    "KAIROS_NATS_URL": nats_server.url,
                    "KAIROS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
                    "KAIROS_ADMIN_KEY": admin_key,
                },
            )
        )
        registry = await launched.launch("registry")

        async with KairosClient(registry.address, admin_key) as admin:
            await admin.workspaces.CreateWorkspace(
                workspace_service_pb2.CreateWorkspaceRequest(workspace=workspace_pb2.Workspace(name="workspaces/kill"))
            )
            key = (
                await admin.workspaces.CreateApiKey(workspace_service_pb2.CreateApiKeyRequest(parent="workspaces/kill"))
            ).key

        async with KairosClient(registry.address, key) as kairos:
            # the registry now knows the key (it authenticates from its own feed mirror, which NATS will not feed
            # while it is down)
            await kairos.triggers.ListTriggers(trigger_service_pb2.ListTriggersRequest())
            await nats_server.stop()
            # committed to the database; the publish to the feed cannot happen and is deferred
            created = (
                await kairos.triggers.CreateTrigger(
                    trigger_service_pb2.CreateTriggerRequest(trigger=schedule_trigger(cron="*/5 * * * *")),
                    timeout=PROCESS_TIMEOUT_S,
                )
            ).trigger
        await registry.kill()

        await nats_server.start()
        nc = await nats.connect(nats_server.url)
        stack.push_async_callback(nc.close)
        buckets = await messaging.ensure_all(nc.jetstream())
        # the killed registry never published it: only the outbox row in its database holds the change
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await buckets.triggers.get(feed_key(created.name))
        mirror: KvMirror[trigger_pb2.Trigger] = KvMirror(buckets.triggers, trigger_pb2.Trigger)
        await mirror.start()
        stack.push_async_callback(mirror.stop)
        assert mirror.cached(feed_key(created.name)) is None

        await registry.start()
        async with asyncio.timeout(PROCESS_TIMEOUT_S):
            fed = await mirror.wait_until(feed_key(created.name), lambda t: t is not None)
        assert fed.name == created.name and fed.revision == 1 and fed.source.schedule.cron.expression == "*/5 * * * *"
        entry = await buckets.triggers.get(feed_key(created.name))
        assert trigger_pb2.Trigger.FromString(entry.value).name == created.name
