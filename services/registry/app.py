"""Composition root of the registry: engine, migrations, outbox relay, trigger counters and servicers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from kairos.core import db
from kairos.core.runtime import Runtime
from kairos.core.sealing import Sealer
from kairos.registry import control, outbox
from kairos.registry.reads import RowReader
from kairos.registry.servicer import TriggerServicer, WebhookServicer, WorkspaceServicer
from kairos.registry.stats import TriggerStatsConsumer
from kairos.registry.transactions import Transactions
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
    transactions = Transactions(sessions, runtime.config.database_url)
    stack.callback(transactions.close)
    buckets = runtime.buckets
    relay = outbox.OutboxRelay(
        sessions,
        {
            outbox.TRIGGERS: buckets.triggers,
            outbox.WEBHOOKS: buckets.webhooks,
            outbox.API_KEYS: buckets.api_keys,
            outbox.WORKSPACES: buckets.workspaces,
        },
        transactions,
    )
    await relay.start()
    stack.push_async_callback(relay.stop)

    sealer = Sealer(runtime.config.secret_key) if runtime.config.secret_key else None
    workspaces = WorkspaceRegistry(sessions, relay, sealer)
    runtime.extras["workspaces"] = workspaces
    reader = RowReader(runtime.config.database_url, sessions)
    stack.callback(reader.close)
    triggers = TriggerRegistry(sessions, relay, runtime.js, reader, transactions)
    server = runtime.grpc.server
    trigger_service_pb2_grpc.add_TriggerServiceServicer_to_server(TriggerServicer(triggers), server)
    webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(
        WebhookServicer(WebhookRegistry(sessions, relay, sealer)), server
    )
    workspace_service_pb2_grpc.add_WorkspaceServiceServicer_to_server(WorkspaceServicer(workspaces), server)
    await control.start(stack, runtime, triggers)
    stats = TriggerStatsConsumer(runtime.js, transactions)
    await stats.start()
    stack.push_async_callback(stats.stop)
    runtime.extras["trigger_stats"] = stats
    for service in ("TriggerService", "WebhookService", "WorkspaceService"):
        runtime.grpc.add(f"kairos.v1.{service}")
