"""Runs the suite inside the caller's event loop, on its own nats-server: for tests and benchmarks."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.client import KairosClient
from kairos.core import messaging
from kairos.core.config import ServiceConfig
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.core.runtime import SERVICE_MODULES, Runtime, run_services
from kairos.v1 import run_pb2, workspace_pb2, workspace_service_pb2


@dataclass
class Suite:
    """Services running in the test's event loop on their own nats-server (or the caller's), gRPC on a free port."""

    runtime: Runtime
    admin_key: str
    nats_url: str

    @property
    def address(self) -> str:
        return self.runtime.endpoints["grpc"]

    @property
    def webhooks_url(self) -> str:
        return self.runtime.endpoints["webhooks"]

    def client(self, api_key: str) -> KairosClient:
        return KairosClient(self.address, api_key)

    async def new_workspace(self, workspace: str) -> str:
        """Creates a workspace through the admin API and returns an API key for it."""
        async with self.client(self.admin_key) as admin:
            await admin.workspaces.CreateWorkspace(
                workspace_service_pb2.CreateWorkspaceRequest(
                    workspace=workspace_pb2.Workspace(name=f"workspaces/{workspace}")
                )
            )
            response = await admin.workspaces.CreateApiKey(
                workspace_service_pb2.CreateApiKeyRequest(parent=f"workspaces/{workspace}")
            )
        return response.key


@asynccontextmanager
async def running_suite(
    data_dir: Path,
    database_url: str,
    services: tuple[str, ...] = tuple(SERVICE_MODULES),
    env: dict[str, str] | None = None,
    nats_url: str | None = None,
) -> AsyncIterator[Suite]:
    """`env` adds or overrides KAIROS_* settings (e.g. `{"KAIROS_SECRET_KEY": ""}` to run without one); without
    `nats_url` the suite runs on a nats-server of its own."""
    admin_key = secrets.token_urlsafe(24)
    async with AsyncExitStack() as stack:
        if nats_url is None:
            nats_url = (await stack.enter_async_context(EmbeddedNatsServer(data_dir / "nats"))).url
        config = ServiceConfig.from_env(
            {
                "KAIROS_NATS_URL": nats_url,
                "KAIROS_DATABASE_URL": database_url,
                "KAIROS_GRPC_PORT": "0",
                "KAIROS_HTTP_PORT": "0",
                "KAIROS_ADMIN_KEY": admin_key,
                "KAIROS_SECRET_KEY": secrets.token_urlsafe(32),
            }
            | (env or {})
        )
        ready: asyncio.Future[Runtime] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()

        async def on_ready(runtime: Runtime) -> None:
            ready.set_result(runtime)

        task = asyncio.create_task(run_services(services, config, on_ready=on_ready, stop=stop, handle_signals=False))
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            task.result()
        try:
            yield Suite(ready.result(), admin_key, nats_url)
        finally:
            stop.set()
            await task


TRACE_TIMEOUT_S = 15.0


class Traces:
    """Every TraceEvent the executor publishes for one workspace, collected from the moment of subscribing."""

    def __init__(self, nc) -> None:
        self.nc = nc
        self.events: list[run_pb2.TraceEvent] = []
        self._changed = asyncio.Event()

    async def on_message(self, message) -> None:
        self.events.append(run_pb2.TraceEvent.FromString(message.data))
        self._changed.set()

    async def wait_for(self, predicate: Callable[[run_pb2.TraceEvent], bool]) -> run_pb2.TraceEvent:
        async with asyncio.timeout(TRACE_TIMEOUT_S):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def run_ended(self, fire_id: str) -> run_pb2.TraceEvent:
        """The end event of the run of `fire_id`; fails unless it completed."""
        ended = await self.wait_for(
            lambda e: e.fire_id == fire_id and e.type in ("run.completed", "run.failed", "run.cancelled")
        )
        assert ended.type == "run.completed", ended
        return ended


@asynccontextmanager
async def traces_of(suite: Suite, workspace: str) -> AsyncIterator[Traces]:
    """Collects the workspace's trace events while the block runs."""
    nc = await messaging.connect(suite.nats_url, f"test-traces-{workspace}")
    traces = Traces(nc)
    try:
        await nc.subscribe(f"{messaging.TRACE_SUBJECT_PREFIX}.{workspace}.>", cb=traces.on_message)
        await nc.flush()
        yield traces
    finally:
        await nc.close()


async def wait_serving(address: str, timeout: float) -> bool:
    """Waits (at most `timeout` s) until the gRPC server at `address` answers a health check; True if SERVING."""
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=timeout
        )
    return response.status == health_pb2.HealthCheckResponse.SERVING
