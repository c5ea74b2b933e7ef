"""Composition root of the registry: engine, migrations, outbox relay and servicers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from kairos.core import db
from kairos.core.runtime import Runtime
from kairos.registry import outbox
from kairos.registry.servicer import TriggerServicer, WebhookServicer, WorkspaceServicer
from kairos.registry.triggers import TriggerRegistry
from kairos.registry.webhooks import WebhookRegistry
from kairos.registry.workspaces import WorkspaceRegistry
from kairos.v1 import trigger_service_pb2_grpc, webhook_service_pb2_grpc, workspace_service_pb2_grpc

MIGRATIONS = "kairos.registry:migrations"
VERSION_TABLE = "alembic_version_registry"


async def start(stack: AsyncExitStack, runtime: Runtime) -> None:
    engine = db.create_engine(runtime.config.database_url)
    stack.push_async_callback(engine.dispose)
    await db.migrate(engine, MIGRATIONS, VERSION_TABLE)
    sessions = db.session_factory(engine)
    buckets = runtime.buckets
    relay = outbox.OutboxRelay(
        sessions,
        {
            outbox.TRIGGERS: buckets.triggers,
            outbox.WEBHOOKS: buckets.webhooks,
            outbox.API_KEYS: buckets.api_keys,
        },
    )
    await relay.start()
    stack.push_async_callback(relay.stop)

    workspaces = WorkspaceRegistry(sessions, relay)
    runtime.extras["workspaces"] = workspaces
    server = runtime.grpc.server
    trigger_service_pb2_grpc.add_TriggerServiceServicer_to_server(
        TriggerServicer(TriggerRegistry(sessions, relay, runtime.js)), server
    )
    webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(
        WebhookServicer(WebhookRegistry(sessions, relay)), server
    )
    workspace_service_pb2_grpc.add_WorkspaceServiceServicer_to_server(WorkspaceServicer(workspaces), server)
    for service in ("TriggerService", "WebhookService", "WorkspaceService"):
        runtime.grpc.add(f"kairos.v1.{service}")
