"""The suite as it runs in production: four separate processes against a real nats-server, each service
with its own SQLite file. Proves the schedule and webhook paths end in a completed run, that a wrong bearer
token is refused, that health and reflection answer, and that SIGTERM shuts every process down cleanly. And that a
service raises its soft limit on open files (every connection is one) to the hard limit."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import httpx
import nats
import pytest_asyncio
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kairos.client import KairosClient, schedule_trigger, webhook_trigger
from kairos.core.natsserver import EmbeddedNatsServer, free_port
from kairos.devtools.processes import ServiceProcesses
from kairos.v1 import (
    run_pb2,
    run_service_pb2,
    trigger_service_pb2,
    webhook_pb2,
    webhook_service_pb2,
    workspace_pb2,
    workspace_service_pb2,
)

SERVICES = ("registry", "scheduler", "ingress", "executor")
RUN_TIMEOUT_S = 30


@dataclass
class Processes:
    launched: ServiceProcesses
    http_port: int
    admin_key: str
    nats_url: str

    def address(self, service: str) -> str:
        return self.launched.launched[service].address

    def client(self, api_key: str) -> KairosClient:
        return KairosClient(
            self.address("registry"),
            api_key,
            targets={
                "runs": self.address("executor"),
                "events": self.address("ingress"),
                "scheduler": self.address("scheduler"),
            },
        )

    def log_tail(self) -> str:
        return self.launched.log_tail()


@pytest_asyncio.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    admin_key = secrets.token_urlsafe(24)
    async with EmbeddedNatsServer(tmp_path / "nats") as nats_server:
        http_port = free_port()
        launched = ServiceProcesses(
            tmp_path / "logs",
            {"KAIROS_NATS_URL": nats_server.url, "KAIROS_HTTP_PORT": str(http_port), "KAIROS_ADMIN_KEY": admin_key},
        )
        result = Processes(launched, http_port, admin_key, nats_server.url)
        try:
            for service in SERVICES:
                database = f"sqlite+aiosqlite:///{tmp_path / f'{service}.db'}"
                await launched.launch(service, env={"KAIROS_DATABASE_URL": database}, wait=False)
            await launched.wait_serving()
            yield result
        finally:
            codes = await launched.stop_all()
        assert codes == dict.fromkeys(SERVICES, 0), f"unclean shutdown {codes}\n{result.log_tail()}"


async def list_services(address: str) -> set[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for response in call:
            return {service.name for service in response.list_services_response.service}
    return set()


async def wait_completed(traces, fire_id_prefix: str) -> run_pb2.TraceEvent:
    """The first run.completed (or run.failed) trace event of a fire whose id starts with the prefix."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        async for message in traces.messages:
            event = run_pb2.TraceEvent.FromString(message.data)
            if event.fire_id.startswith(fire_id_prefix) and event.type in ("run.completed", "run.failed"):
                return event
    raise AssertionError("trace subscription ended")


async def test_four_processes_schedule_and_webhook_runs_complete(processes: Processes) -> None:
    expected = {
        "registry": {"kairos.v1.TriggerService", "kairos.v1.WebhookService", "kairos.v1.WorkspaceService"},
        "scheduler": {"kairos.v1.SchedulerService"},
        "ingress": {"kairos.v1.EventService"},
        "executor": {"kairos.v1.RunService"},
    }
    for service in SERVICES:
        listed = await list_services(processes.address(service))
        assert expected[service] | {"grpc.health.v1.Health"} <= listed, (service, listed)

    async with processes.client(processes.admin_key) as admin:
        await admin.workspaces.CreateWorkspace(
            workspace_service_pb2.CreateWorkspaceRequest(workspace=workspace_pb2.Workspace(name="workspaces/acme"))
        )
        key = (
            await admin.workspaces.CreateApiKey(workspace_service_pb2.CreateApiKeyRequest(parent="workspaces/acme"))
        ).key

    tracer = await nats.connect(processes.nats_url)
    traces = await tracer.subscribe("kairos.trace.acme.>")
    try:
        async with processes.client(key) as kairos:
            scheduled = (
                await kairos.triggers.CreateTrigger(
                    trigger_service_pb2.CreateTriggerRequest(
                        trigger=schedule_trigger(every=timedelta(seconds=1), prompt="tick")
                    )
                )
            ).trigger
            event = await wait_completed(traces, f"{scheduled.name}@")
            assert event.type == "run.completed", event
            run = (await kairos.runs.GetRun(run_service_pb2.GetRunRequest(name=event.run))).run
            assert run.status == run_pb2.RunStatus.RUN_STATUS_COMPLETED
            assert run.trigger_type == run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE
            assert run.HasField("scheduled_time")
            assert json_format.MessageToDict(run.output)["echo"] == {"prompt": "tick"}
            await kairos.triggers.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(name=scheduled.name))

            hooked = (
                await kairos.triggers.CreateTrigger(
                    trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger(prompt="new lead"))
                )
            ).trigger
            created = await kairos.webhooks.CreateWebhook(
                webhook_service_pb2.CreateWebhookRequest(
                    webhook=webhook_pb2.Webhook(trigger=hooked.name, field_mapping={"contact.phone": "phone_to"})
                )
            )
            url = f"http://127.0.0.1:{processes.http_port}{created.webhook.path}"
            body = {"type": "lead.created", "contact": {"phone": "+15550100"}}
            async with httpx.AsyncClient(timeout=10) as http:
                refused = await http.post(url, json=body, headers={"Authorization": "Bearer not-the-token"})
                assert refused.status_code == 401, refused.text
                assert refused.json()["error"] == "invalid_credentials"
                accepted = await http.post(url, json=body, headers={"Authorization": f"Bearer {created.secret}"})
                assert accepted.status_code == 202, accepted.text
                assert accepted.json()["status"] == "accepted"
            event_id = accepted.json()["event_id"]
            event = await wait_completed(traces, f"{created.webhook.name}@{event_id}")
            assert event.type == "run.completed", event
            run = (await kairos.runs.GetRun(run_service_pb2.GetRunRequest(name=event.run))).run
            assert run.status == run_pb2.RunStatus.RUN_STATUS_COMPLETED
            assert run.trigger_type == run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK
            assert run.input["phone_to"] == "+15550100"
            assert run.input["prompt"] == "new lead"
            assert json_format.MessageToDict(run.payload) == body

            listed = await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=hooked.name))
            assert [r.name for r in listed.runs] == [run.name]
    finally:
        await tracer.close()


def test_services_raise_their_open_files_limit_to_the_hard_limit() -> None:
    """Run in a child whose soft limit is set low first (as a shell's `ulimit -Sn 256` would)."""
    script = (
        "import resource\n"
        "from kairos.core.runtime import raise_open_files_limit\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "assert raise_open_files_limit() == hard\n"
        "assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
