"""Registry throughput over gRPC on SQLite from one client process: GetTrigger and CreateTrigger, and the latency of
ListUpcomingRuns over a workspace of 10,000 schedule triggers.

The registry runs as its own process (`python -m kairos.registry`, default settings: SQLite, info logging) against
its own nats-server, so the load generator here does not share its interpreter. Targets (issue 3, on a 2-core
machine): >= 3,000 gets/s and >= 500 creates/s.

`registry.get_trigger_per_s.vs.health_check` divides the GetTrigger rate by the rate of grpc.health.v1 Check
calls to the same process in the same run: the cost of a gRPC call with no work in it, which bounds what any
handler can reach on the machine of the moment (a shared, noisy machine moves both figures together). The
`*_server_cpu_us` figures are the registry process's CPU time per call (from /proc), which other load on the
machine moves much less than the rates: grpc.aio alone costs the health check's figure on each side of a call.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.client import KairosClient, schedule_trigger
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.devtools.processes import ServiceProcesses
from kairos.v1 import trigger_service_pb2, workspace_pb2, workspace_service_pb2
from tests.benchmarks.procstat import cpu_seconds

FIGURES = (
    "registry.get_trigger_per_s",
    "registry.get_trigger_server_cpu_us",
    "registry.health_check_per_s",
    "registry.health_check_server_cpu_us",
    "registry.get_trigger_per_s.vs.health_check",
    "registry.create_trigger_per_s",
    "registry.create_trigger_server_cpu_us",
    "registry.list_upcoming_10k_ms",
)
GETS = 20_000
CREATES = 2_000
UPCOMING_TRIGGERS = 10_000
UPCOMING_CALLS = 5
CONCURRENCY = 64
CRONS = ("*/5 * * * *", "0 9 * * 1-5", "30 2 * * SUN", "0 */2 * * *", "15 10 1 * *", "@hourly")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")


async def _spread(total: int, call) -> float:
    """Runs `call(i)` for i < total with CONCURRENCY callers; returns calls per second."""
    counter = iter(range(total))

    async def caller() -> None:
        for index in counter:
            await call(index)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return total / (time.perf_counter() - started)


async def _spread_with_cpu(total: int, call, pid: int) -> tuple[float, float]:
    """`_spread`, and the registry's CPU microseconds per call meanwhile (steadier than the rate on a busy machine)."""
    before = cpu_seconds(pid)
    rate = await _spread(total, call)
    return rate, (cpu_seconds(pid) - before) * 1e6 / total


async def _workspace(address: str, admin_key: str, workspace: str, max_schedule_triggers: int = 0) -> str:
    async with KairosClient(address, admin_key) as admin:
        await admin.workspaces.CreateWorkspace(
            workspace_service_pb2.CreateWorkspaceRequest(
                workspace=workspace_pb2.Workspace(
                    name=f"workspaces/{workspace}",
                    quota=workspace_pb2.WorkspaceQuota(max_schedule_triggers=max_schedule_triggers),
                )
            )
        )
        response = await admin.workspaces.CreateApiKey(
            workspace_service_pb2.CreateApiKeyRequest(parent=f"workspaces/{workspace}")
        )
    return response.key


def _trigger(index: int):
    return schedule_trigger(cron=CRONS[index % len(CRONS)], timezone=ZONES[index % len(ZONES)], prompt=f"bench {index}")


async def _measure(address: str, pid: int, admin_key: str, report) -> None:
    key = await _workspace(address, admin_key, "bench")
    async with KairosClient(address, key) as kairos:
        create, get = kairos.triggers.CreateTrigger, kairos.triggers.GetTrigger
        names = [
            (await create(trigger_service_pb2.CreateTriggerRequest(trigger=_trigger(i)))).trigger.name
            for i in range(64)
        ]
        requests = [trigger_service_pb2.GetTriggerRequest(name=name) for name in names]
        await _spread(1_000, lambda i: get(requests[i % len(requests)]))
        gets, get_cpu = await _spread_with_cpu(GETS, lambda i: get(requests[i % len(requests)]), pid)
        report("registry.get_trigger_per_s", gets, "req/s")
        report("registry.get_trigger_server_cpu_us", get_cpu, "us/call")
        async with grpc.aio.insecure_channel(address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            probe = health_pb2.HealthCheckRequest()
            await _spread(1_000, lambda _: check(probe))
            checks, check_cpu = await _spread_with_cpu(GETS, lambda _: check(probe), pid)
        report("registry.health_check_per_s", checks, "req/s")
        report("registry.health_check_server_cpu_us", check_cpu, "us/call")
        report("registry.get_trigger_per_s.vs.health_check", gets / checks, "x")
        creates, create_cpu = await _spread_with_cpu(
            CREATES, lambda i: create(trigger_service_pb2.CreateTriggerRequest(trigger=_trigger(i))), pid
        )
        report("registry.create_trigger_per_s", creates, "req/s")
        report("registry.create_trigger_server_cpu_us", create_cpu, "us/call")

    key = await _workspace(address, admin_key, "upcoming", max_schedule_triggers=UPCOMING_TRIGGERS)
    async with KairosClient(address, key) as kairos:
        create = kairos.triggers.CreateTrigger
        await _spread(
            UPCOMING_TRIGGERS, lambda i: create(trigger_service_pb2.CreateTriggerRequest(trigger=_trigger(i)))
        )
        request = trigger_service_pb2.ListUpcomingRunsRequest(parent="workspaces/upcoming", page_size=100)
        durations = []
        for _ in range(UPCOMING_CALLS):
            started = time.perf_counter()
            response = await kairos.triggers.ListUpcomingRuns(request, timeout=120)
            durations.append((time.perf_counter() - started) * 1000)
            assert len(response.upcoming_runs) == 100
        report("registry.list_upcoming_10k_ms", statistics.median(durations), "ms")


async def run(report) -> None:
    admin_key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        async with EmbeddedNatsServer(data / "nats") as nats_server:
            env = {
                "KAIROS_NATS_URL": nats_server.url,
                "KAIROS_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'registry.db'}",
                "KAIROS_ADMIN_KEY": admin_key,
            }
            async with ServiceProcesses(data / "logs", env) as launched:
                registry = await launched.launch("registry")
                await _measure(registry.address, registry.process.pid, admin_key, report)
