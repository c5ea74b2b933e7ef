"""Scheduler replicas as separate processes: three `python -m kairos.scheduler` share the shards, one is killed
with SIGKILL while triggers fire every second; its triggers fire from another replica within 10 s, and over
the whole time range every fire id has exactly one message on KAIROS_FIRES and exactly one run."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest_asyncio
from nats.js.api import DeliverPolicy

from kairos.client import KairosClient, schedule_trigger
from kairos.core import messaging
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.core.schedule import compile_schedule
from kairos.devtools.processes import ServiceProcess, ServiceProcesses
from kairos.scheduler.engine import NUM_SHARDS, fire_id, shard_of
from kairos.scheduler.state import REPLICA_PREFIX
from kairos.v1 import (
    fire_pb2,
    run_pb2,
    run_service_pb2,
    scheduler_service_pb2,
    trigger_pb2,
    trigger_service_pb2,
    workspace_pb2,
    workspace_service_pb2,
)

REPLICAS = 3
TRIGGERS = 6
TAKEOVER_LIMIT = timedelta(seconds=10)


@dataclass
class Cluster:
    nats_url: str
    admin_key: str
    launched: ServiceProcesses
    schedulers: dict[str, ServiceProcess]  # by replica id

    def client(self, api_key: str, scheduler: ServiceProcess | None = None) -> KairosClient:
        targets = {"runs": self.launched.launched["executor"].address}
        if scheduler is not None:
            targets["scheduler"] = scheduler.address
        return KairosClient(self.launched.launched["registry"].address, api_key, targets=targets)

    def log_tail(self) -> str:
        return self.launched.log_tail(2000)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    admin_key = secrets.token_urlsafe(24)
    async with EmbeddedNatsServer(tmp_path / "nats") as nats_server:
        env = {"KAIROS_NATS_URL": nats_server.url, "KAIROS_ADMIN_KEY": admin_key}
        async with ServiceProcesses(tmp_path / "logs", env) as launched:

            def database(service: str) -> dict[str, str]:
                return {"KAIROS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / f'{service}.db'}"}

            await launched.launch("registry", env=database("registry"), wait=False)
            await launched.launch("executor", env=database("executor"), wait=False)
            schedulers = {}
            for index in range(REPLICAS):
                replica_id = f"scheduler-{index}"
                schedulers[replica_id] = await launched.launch(
                    "scheduler",
                    label=replica_id,
                    env={**database("scheduler"), "KAIROS_SCHEDULER_REPLICA_ID": replica_id},
                    wait=False,
                )
            await launched.wait_serving()
            yield Cluster(nats_server.url, admin_key, launched, schedulers)


async def scheduler_status(cluster: Cluster, scheduler: ServiceProcess) -> list[scheduler_service_pb2.SchedulerReplica]:
    async with cluster.client(cluster.admin_key, scheduler) as admin:
        response = await admin.scheduler.GetSchedulerStatus(scheduler_service_pb2.GetSchedulerStatusRequest())
    return list(response.replicas)


async def wait_balanced(
    cluster: Cluster, scheduler: ServiceProcess, replicas: int
) -> list[scheduler_service_pb2.SchedulerReplica]:
    """Re-reads the status RPC whenever a replica heartbeat (which carries its shards) changes in KV, until the
    shards are split evenly among `replicas` live replicas. Callers bound it with asyncio.timeout."""
    fair = -(-NUM_SHARDS // replicas)
    watcher_client = await nats.connect(cluster.nats_url)
    bucket = await watcher_client.jetstream().key_value(messaging.SCHEDULER_BUCKET)
    heartbeats = await bucket.watch(f"{REPLICA_PREFIX}*")
    try:
        while True:
            status = await scheduler_status(cluster, scheduler)
            shards = [shard for replica in status for shard in replica.shards]
            if (
                len(status) == replicas
                and sorted(shards) == list(range(NUM_SHARDS))
                and all(fair - replicas <= len(replica.shards) <= fair for replica in status)
            ):
                return status
            await heartbeats.updates(timeout=30)
    finally:
        await heartbeats.stop()
        await watcher_client.close()


async def test_killed_replica_shards_move_and_every_fire_runs_exactly_once(cluster: Cluster) -> None:
    async with cluster.client(cluster.admin_key) as admin:
        await admin.workspaces.CreateWorkspace(
            workspace_service_pb2.CreateWorkspaceRequest(workspace=workspace_pb2.Workspace(name="workspaces/acme"))
        )
        key = (
            await admin.workspaces.CreateApiKey(workspace_service_pb2.CreateApiKeyRequest(parent="workspaces/acme"))
        ).key
    async with asyncio.timeout(30):
        status = await wait_balanced(cluster, cluster.schedulers["scheduler-0"], REPLICAS)
    tracer = await nats.connect(cluster.nats_url)
    traces = await tracer.subscribe("kairos.trace.acme.>")
    completed: Counter[str] = Counter()
    try:
        async with cluster.client(key) as kairos:
            triggers = []
            for _ in range(TRIGGERS):
                trigger = schedule_trigger(every=timedelta(seconds=1), prompt="tick")
                trigger.policies.overlap = trigger_pb2.OverlapPolicy.OVERLAP_POLICY_ALLOW
                created = await kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=trigger))
                triggers.append(created.trigger)
            keys = {t.name: f"acme.{t.name.rsplit('/', 1)[1]}" for t in triggers}
            owner = {shard: replica.id for replica in status for shard in replica.shards}
            held = Counter(owner[shard_of(keys[t.name])] for t in triggers)
            victim_id = held.most_common(1)[0][0]
            victim_triggers = {t.name for t in triggers if owner[shard_of(keys[t.name])] == victim_id}
            survivor = next(process for label, process in cluster.schedulers.items() if label != victim_id)

            async def next_completed(predicate) -> run_pb2.TraceEvent:
                async for message in traces.messages:
                    event = run_pb2.TraceEvent.FromString(message.data)
                    if event.type == "run.completed":
                        completed[event.fire_id] += 1
                        if predicate(event):
                            return event
                raise AssertionError("trace subscription ended")

            async with asyncio.timeout(20):
                first = await next_completed(lambda e: e.trigger in victim_triggers)
            range_start = _instant(first.fire_id) + timedelta(seconds=1)
            async with asyncio.timeout(20):
                await next_completed(lambda e: _instant(e.fire_id) >= range_start + timedelta(seconds=2))

            await cluster.schedulers[victim_id].kill()
            killed_at = datetime.now(UTC)
            async with asyncio.timeout(30):
                taken_over = await next_completed(
                    lambda e: e.trigger in victim_triggers and _instant(e.fire_id) > killed_at
                )
            run = (await kairos.runs.GetRun(run_service_pb2.GetRunRequest(name=taken_over.run))).run
            assert run.fire_time.ToDatetime(UTC) - killed_at < TAKEOVER_LIMIT, (killed_at, run)
            range_end = _instant(taken_over.fire_id) + timedelta(seconds=2)

            expected = {
                t.name: [
                    fire_id(t.name, instant)
                    for instant in compile_schedule(
                        t.source.schedule, anchor=t.create_time.ToDatetime(UTC)
                    ).fires_between(range_start, range_end)
                ]
                for t in triggers
            }
            wanted = {fid for fids in expected.values() for fid in fids}
            async with asyncio.timeout(30):
                while not wanted <= set(completed):
                    await next_completed(lambda e: e.fire_id in wanted)

            for trigger in triggers:
                runs = await _all_runs(kairos, trigger.name)
                per_fire = Counter(r.fire_id for r in runs)
                for fid in expected[trigger.name]:
                    assert per_fire[fid] == 1, (fid, per_fire[fid], cluster.log_tail())
        assert all(completed[fid] == 1 for fid in wanted), {fid: completed[fid] for fid in wanted}

        published = await _fires_on_stream(tracer)
        assert all(published[fid] == 1 for fid in wanted), {fid: published[fid] for fid in wanted}
        assert max(published.values()) == 1

        async with asyncio.timeout(30):
            after = await wait_balanced(cluster, survivor, REPLICAS - 1)
        assert victim_id not in {replica.id for replica in after}
    finally:
        await tracer.close()


def _instant(fire: str) -> datetime:
    return datetime.fromisoformat(fire.rsplit("@", 1)[1])


async def _all_runs(kairos: KairosClient, parent: str) -> list[run_pb2.Run]:
    runs: list[run_pb2.Run] = []
    token = ""
    while True:
        page = await kairos.runs.ListRuns(
            run_service_pb2.ListRunsRequest(parent=parent, page_size=1000, page_token=token)
        )
        runs.extend(page.runs)
        token = page.next_page_token
        if not token:
            return runs


async def _fires_on_stream(nc: nats.NATS) -> Counter[str]:
    """How many messages KAIROS_FIRES holds per fire id (Msg-Id de-duplication makes each 1)."""
    js = nc.jetstream()
    info = await js.stream_info("KAIROS_FIRES")
    subscription = await js.subscribe("kairos.fire.acme.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    counts: Counter[str] = Counter()
    async with asyncio.timeout(30):
        for _ in range(info.state.messages):
            message = await subscription.next_msg(timeout=10)
            counts[fire_pb2.FireRequest.FromString(message.data).fire_id] += 1
    await subscription.unsubscribe()
    return counts
