"""Executor speed, the services under test in their own processes, the load generated from this one.

- `executor.runs_per_s`: fires published onto KAIROS_FIRES -> runs recorded `completed` (SQLite, the no-op test
  agent), timed from the first publish to the last `run.completed` trace event. Target (issue 6): >= 1,000/s.
- `executor.direct_fire_to_agent_p50_ms` / `_p99_ms`: the executor alone; fires published onto KAIROS_FIRES at
  a steady 200/s, timed from the publish to the envelope's arrival at a NATS responder agent in this process:
  the executor's own share of the webhook figure below.
- `executor.webhook_to_agent_p50_ms` / `_p99_ms`: registry, ingress and executor as three processes; webhook
  POSTs at a steady 200 requests/s from a raw keep-alive client (`rawhttp`; httpx saturated a core at this rate and
  its queueing read as seconds of latency); the agent is a NATS responder in this process that notes when each
  envelope arrives (same clock as the POST). Target: p99 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx

from kairos.client import KairosClient, webhook_trigger
from kairos.core import messaging
from kairos.core.natsserver import EmbeddedNatsServer, free_port
from kairos.devtools.processes import ServiceProcesses
from kairos.v1 import (
    fire_pb2,
    run_pb2,
    trigger_pb2,
    trigger_service_pb2,
    webhook_pb2,
    webhook_service_pb2,
    workspace_pb2,
    workspace_service_pb2,
)
from tests.benchmarks.rawhttp import ConnectionPool, request_bytes

FIGURES = (
    "executor.runs_per_s",
    "executor.direct_fire_to_agent_p50_ms",
    "executor.direct_fire_to_agent_p99_ms",
    "executor.webhook_to_agent_p50_ms",
    "executor.webhook_to_agent_p99_ms",
)
FIRES = 3_000
TRIGGERS = 50
WEBHOOK_RATE_PER_S = 200
CONNECTIONS = 64
WEBHOOK_SECONDS = 10
WARMUP_REQUESTS = 50
READY_TIMEOUT_S = 60
RUN_TIMEOUT_S = 120
WORKSPACE = "bench"


async def _launch(stack: AsyncExitStack, data: Path, nats_url: str, services: tuple[str, ...], env: dict[str, str]):
    """`services` as processes (kairos.devtools.processes), each with its own SQLite file; their addresses."""
    launched = await stack.enter_async_context(
        ServiceProcesses(data / "logs", {"KAIROS_NATS_URL": nats_url, "KAIROS_LOG_LEVEL": "warning", **env})
    )
    addresses = {}
    for service in services:
        database = {"KAIROS_DATABASE_URL": f"sqlite+aiosqlite:///{data / f'{service}.db'}"}
        addresses[service] = (await launched.launch(service, env=database)).address
    return addresses


async def _runs_per_s(data: Path) -> float:
    async with AsyncExitStack() as stack:
        nats_server = await stack.enter_async_context(EmbeddedNatsServer(data / "nats"))
        env = {"KAIROS_PYTHON_RUNNER_MODULES": "kairos.agents,kairos.testing_agents"}
        await _launch(stack, data, nats_server.url, ("executor",), env)
        nc = await messaging.connect(nats_server.url, "bench-executor")
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        completed = 0
        done = asyncio.Event()

        async def on_trace(message) -> None:
            nonlocal completed
            if run_pb2.TraceEvent.FromString(message.data).type == "run.completed":
                completed += 1
                if completed == FIRES:
                    done.set()

        await nc.subscribe(f"{messaging.TRACE_SUBJECT_PREFIX}.{WORKSPACE}.>", cb=on_trace)
        await nc.flush()
        action = trigger_pb2.Action(
            agent="agents/noop",
            runner=trigger_pb2.Runner(python=trigger_pb2.PythonRunner(entry_point="kairos.testing_agents:noop")),
        )

        async def publish(index: int) -> None:
            await _publish_fire(js, f"bench-{index}", index, action, run_pb2.TriggerType.TRIGGER_TYPE_MANUAL)

        started = time.perf_counter()
        for chunk in range(0, FIRES, 500):
            await asyncio.gather(*(publish(index) for index in range(chunk, min(FIRES, chunk + 500))))
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await done.wait()
        return FIRES / (time.perf_counter() - started)


async def _publish_fire(
    js, fire_id: str, index: int, action: trigger_pb2.Action, trigger_type: int, payload: dict | None = None
) -> None:
    """One fire of trigger `t<index % TRIGGERS>` (overlap allowed) straight onto KAIROS_FIRES."""
    trigger = f"t{index % TRIGGERS}"
    fire = fire_pb2.FireRequest(
        fire_id=fire_id,
        trigger=f"workspaces/{WORKSPACE}/triggers/{trigger}",
        trigger_type=trigger_type,
        action=action,
        policies=trigger_pb2.Policies(overlap=trigger_pb2.OverlapPolicy.OVERLAP_POLICY_ALLOW),
    )
    if payload is not None:
        fire.payload_json = json.dumps(payload).encode()  # as the ingress sends a webhook body
    fire.fire_time.GetCurrentTime()
    await messaging.publish_fire(js, messaging.fire_subject(WORKSPACE, trigger), fire.SerializeToString(), fire_id)


async def _at_steady_rate(total: int, send) -> None:
    """Starts `send(seq)` for seq in 0..total-1 at WEBHOOK_RATE_PER_S, on schedule, and waits for them all."""
    interval = 1 / WEBHOOK_RATE_PER_S
    start = time.perf_counter()
    sends = []
    for seq in range(total):
        delay = start + seq * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sends.append(asyncio.create_task(send(seq)))
    await asyncio.gather(*sends)


async def _direct_fire_latencies(data: Path) -> list[float]:
    async with AsyncExitStack() as stack:
        nats_server = await stack.enter_async_context(EmbeddedNatsServer(data / "nats"))
        await _launch(stack, data, nats_server.url, ("executor",), {})
        nc = await messaging.connect(nats_server.url, "bench-direct")
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        total = WARMUP_REQUESTS + WEBHOOK_RATE_PER_S * WEBHOOK_SECONDS
        sent: dict[int, float] = {}
        arrived: dict[int, float] = {}
        all_arrived = asyncio.Event()

        async def agent(message) -> None:
            seq = json.loads(message.data)["payload"]["seq"]
            arrived[seq] = time.perf_counter()
            await message.respond(b"{}")
            if len(arrived) == total:
                all_arrived.set()

        await nc.subscribe("bench.direct.agent", cb=agent)
        await nc.flush()
        action = trigger_pb2.Action(
            agent="agents/bench", runner=trigger_pb2.Runner(nats=trigger_pb2.NatsRunner(subject="bench.direct.agent"))
        )

        async def publish(seq: int) -> None:
            sent[seq] = time.perf_counter()
            await _publish_fire(
                js, f"direct-{seq}", seq, action, run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK, payload={"seq": seq}
            )

        await _at_steady_rate(total, publish)
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await all_arrived.wait()
        return [(arrived[seq] - sent[seq]) * 1000 for seq in range(WARMUP_REQUESTS, total)]


async def _webhook_latencies(data: Path) -> list[float]:
    admin_key = "bench-admin-key-0123456789"
    async with AsyncExitStack() as stack:
        nats_server = await stack.enter_async_context(EmbeddedNatsServer(data / "nats"))
        http_port = free_port()
        env = {
            "KAIROS_ADMIN_KEY": admin_key,
            "KAIROS_HTTP_PORT": str(http_port),
            "KAIROS_WEBHOOK_RATE_PER_S": "100000",
            "KAIROS_WEBHOOK_BURST": "100000",
        }
        registry = (await _launch(stack, data, nats_server.url, ("registry", "ingress", "executor"), env))["registry"]

        async with KairosClient(registry, admin_key) as admin:
            await admin.workspaces.CreateWorkspace(
                workspace_service_pb2.CreateWorkspaceRequest(
                    workspace=workspace_pb2.Workspace(name=f"workspaces/{WORKSPACE}")
                )
            )
            key = (
                await admin.workspaces.CreateApiKey(
                    workspace_service_pb2.CreateApiKeyRequest(parent=f"workspaces/{WORKSPACE}")
                )
            ).key
        async with KairosClient(registry, key) as kairos:
            trigger = (
                await kairos.triggers.CreateTrigger(
                    trigger_service_pb2.CreateTriggerRequest(
                        trigger=webhook_trigger(agent="agents/bench", nats_subject="bench.agent")
                    )
                )
            ).trigger
            created = await kairos.webhooks.CreateWebhook(
                webhook_service_pb2.CreateWebhookRequest(webhook=webhook_pb2.Webhook(trigger=trigger.name))
            )

        nc = await messaging.connect(nats_server.url, "bench-agent")
        stack.push_async_callback(nc.close)
        arrived: dict[int, float] = {}
        sent: dict[int, float] = {}
        accepted: dict[int, float] = {}

        all_arrived = asyncio.Event()
        total = WARMUP_REQUESTS + WEBHOOK_RATE_PER_S * WEBHOOK_SECONDS

        async def agent(message) -> None:
            seq = json.loads(message.data)["payload"]["seq"]
            arrived[seq] = time.perf_counter()
            await message.respond(b"{}")
            if seq >= 0 and len(arrived) - (-1 in arrived) >= total:
                all_arrived.set()

        await nc.subscribe("bench.agent", cb=agent)
        await nc.flush()

        url = f"http://127.0.0.1:{http_port}{created.webhook.path}"
        headers = {"Authorization": f"Bearer {created.secret}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=1) as http, asyncio.timeout(READY_TIMEOUT_S):
            # Wait until the ingress knows the webhook (it learns it from the change feed).
            while True:
                probe = await http.post(url, json={"seq": -1}, headers=headers)
                if probe.status_code != 404:
                    break
                await asyncio.sleep(0.1)
        async with ConnectionPool(http_port, CONNECTIONS) as pool:

            async def post(seq: int) -> None:
                request = request_bytes(created.webhook.path, headers, json.dumps({"seq": seq}).encode())
                sent[seq] = time.perf_counter()
                status = await pool.post(request)
                if status != 202:
                    raise RuntimeError(f"webhook {seq} answered {status}, not 202")
                accepted[seq] = time.perf_counter()

            await _at_steady_rate(total, post)
            async with asyncio.timeout(RUN_TIMEOUT_S):
                await all_arrived.wait()
        measured = range(WARMUP_REQUESTS, total)
        accept_ms = sorted((accepted[seq] - sent[seq]) * 1000 for seq in measured)
        print(
            f"# webhook 202 latency p50 {statistics.median(accept_ms):.1f} ms, "
            f"p99 {accept_ms[int(len(accept_ms) * 0.99) - 1]:.1f} ms (for telling ingress from executor delay)",
            file=sys.stderr,
        )
        return [(arrived[seq] - sent[seq]) * 1000 for seq in measured]


async def run(report) -> None:
    with tempfile.TemporaryDirectory(prefix="kairos-bench-executor-") as tmp:
        data = Path(tmp) / "throughput"
        data.mkdir()
        report("executor.runs_per_s", await _runs_per_s(data), "runs/s")
        data = Path(tmp) / "direct"
        data.mkdir()
        latencies = sorted(await _direct_fire_latencies(data))
        report("executor.direct_fire_to_agent_p50_ms", statistics.median(latencies), "ms")
        report("executor.direct_fire_to_agent_p99_ms", latencies[int(len(latencies) * 0.99) - 1], "ms")
        data = Path(tmp) / "webhook"
        data.mkdir()
        latencies = sorted(await _webhook_latencies(data))
        report("executor.webhook_to_agent_p50_ms", statistics.median(latencies), "ms")
        report("executor.webhook_to_agent_p99_ms", latencies[int(len(latencies) * 0.99) - 1], "ms")
