"""Composition root of the executor: engine, migrations, runners, the fire consumer and RunService."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx

from kairos.core import db
from kairos.core.runtime import Runtime
from kairos.executor.runners import Runners
from kairos.executor.runs import RunStore
from kairos.executor.servicer import RunServicer
from kairos.executor.worker import FireWorker
from kairos.v1 import run_service_pb2_grpc

MIGRATIONS = "kairos.executor:migrations"
VERSION_TABLE = "alembic_version_executor"


async def start(stack: AsyncExitStack, runtime: Runtime) -> None:
    engine = db.create_engine(runtime.config.database_url)
    stack.push_async_callback(engine.dispose)
    await db.migrate(engine, MIGRATIONS, VERSION_TABLE)
    store = RunStore(db.session_factory(engine), runtime.config.run_retention)

    http = httpx.AsyncClient(headers={"user-agent": "kairos-executor"})
    stack.push_async_callback(http.aclose)
    worker = FireWorker(
        runtime.nats, runtime.js, store, Runners(runtime.nats, http, runtime.config.python_runner_modules)
    )
    await worker.start()
    stack.push_async_callback(worker.stop)

    run_service_pb2_grpc.add_RunServiceServicer_to_server(RunServicer(store), runtime.grpc.server)
    runtime.grpc.add("kairos.v1.RunService")
