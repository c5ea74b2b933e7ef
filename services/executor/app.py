"""Composition root of the executor: engine, migrations, runners, callbacks, the fire consumer and RunService."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx

from kairos.core import db
from kairos.core.feed import KvMirror
from kairos.core.jetstream import JetStreamPublisher
from kairos.core.runtime import Runtime
from kairos.core.sealing import Sealer
from kairos.executor.notify import Callbacks, Signer
from kairos.executor.runners import Runners
from kairos.executor.runs import RunStore
from kairos.executor.servicer import RunServicer
from kairos.executor.worker import FireWorker, WorkerSettings
from kairos.v1 import feed_pb2, run_service_pb2_grpc, trigger_pb2

MIGRATIONS = "kairos.executor:migrations"
VERSION_TABLE = "alembic_version_executor"


async def start(stack: AsyncExitStack, runtime: Runtime) -> None:
    config = runtime.config
    engine = db.create_engine(config.database_url)
    stack.push_async_callback(engine.dispose)
    await db.migrate(engine, MIGRATIONS, VERSION_TABLE)
    sessions = db.session_factory(engine)
    store = RunStore(
        sessions, config.run_retention, float(config.executor_ack_wait_s), db.create_sync_sqlite_engine(engine)
    )
    stack.push_async_callback(store.stop)
    runtime.extras["executor.runs"] = store

    http = httpx.AsyncClient(headers={"user-agent": "kairos-executor"})
    stack.push_async_callback(http.aclose)
    # Workspace signing keys from the registry's change feed: a workspace's requests are signed with its own.
    workspace_keys: KvMirror[feed_pb2.WorkspaceRecord] = KvMirror(runtime.buckets.workspaces, feed_pb2.WorkspaceRecord)
    await workspace_keys.start()
    stack.push_async_callback(workspace_keys.stop)
    sealer = Sealer(config.secret_key) if config.secret_key else None
    runtime.extras["executor.workspaces"] = workspace_keys
    signer = Signer(config.notify_signing_secret, workspace_keys, sealer)
    publisher = JetStreamPublisher(runtime.nats)
    await publisher.start()
    stack.push_async_callback(publisher.close)
    callbacks = Callbacks(
        runtime.js, publisher, http, signer, sessions, float(config.executor_ack_wait_s), config.nats_replicas
    )
    await callbacks.start()
    stack.push_async_callback(callbacks.stop)
    # Trigger states from the registry's change feed: a fire of a trigger paused meanwhile is skipped.
    triggers: KvMirror[trigger_pb2.Trigger] = KvMirror(runtime.buckets.triggers, trigger_pb2.Trigger)
    await triggers.start()
    stack.push_async_callback(triggers.stop)
    runtime.extras["executor.triggers"] = triggers
    worker = FireWorker(
        runtime.nats,
        runtime.js,
        store,
        Runners(runtime.nats, http, config.python_runner_modules, signer),
        callbacks,
        WorkerSettings(
            ack_wait_s=float(config.executor_ack_wait_s),
            workspace_max_concurrent_runs=config.workspace_max_concurrent_runs,
        ),
        triggers,
    )
    await worker.start()
    stack.push_async_callback(worker.stop)

    run_service_pb2_grpc.add_RunServiceServicer_to_server(RunServicer(store, worker), runtime.grpc.server)
    runtime.grpc.add("kairos.v1.RunService")
