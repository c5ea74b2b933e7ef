"""Composition root of the scheduler: follows the trigger change feed, holds shard leases, runs the timer heap."""

from __future__ import annotations

import asyncio
import gc
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any

from kairos.core.auth import require_admin
from kairos.core.messaging import TRIGGERS_BUCKET
from kairos.core.runtime import Runtime
from kairos.scheduler.config import SchedulerConfig
from kairos.scheduler.engine import SchedulerEngine
from kairos.scheduler.shards import LEASE_TTL_S, ShardLeases
from kairos.scheduler.state import SchedulerState, follow_bucket
from kairos.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc


def engine_status(engine: SchedulerEngine) -> dict[str, Any]:
    p50, p99 = engine.lag_percentiles()
    return {
        "scheduled_triggers": engine.scheduled_triggers,
        "fire_lag_p50_ms": p50,
        "fire_lag_p99_ms": p99,
        "fires_published": engine.fires_published,
        "skipped_fires": engine.skipped_fires,
    }


def replica_message(status: dict[str, Any]) -> scheduler_service_pb2.SchedulerReplica:
    replica = scheduler_service_pb2.SchedulerReplica(
        id=status["id"],
        shards=status.get("shards", []),
        scheduled_triggers=status.get("scheduled_triggers", 0),
        fire_lag_p50_ms=status.get("fire_lag_p50_ms", 0.0),
        fire_lag_p99_ms=status.get("fire_lag_p99_ms", 0.0),
        fires_published=status.get("fires_published", 0),
    )
    replica.heartbeat_time.FromDatetime(datetime.fromisoformat(status["time"]))
    return replica


class SchedulerServicer(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, state: SchedulerState, leases: ShardLeases) -> None:
        self._state = state
        self._leases = leases

    async def GetSchedulerStatus(self, request, context):
        require_admin()
        live = self._state.live_replicas(LEASE_TTL_S)
        replicas = [replica_message(status) for replica_id, status in sorted(live.items())]
        return scheduler_service_pb2.GetSchedulerStatusResponse(replicas=replicas)


async def start(stack: AsyncExitStack, runtime: Runtime) -> None:
    state = SchedulerState(runtime.js, runtime.buckets.scheduler)
    await state.start()
    stack.push_async_callback(state.stop)

    engine = SchedulerEngine(runtime.nats, state, replica_id=SchedulerConfig.from_env().replica_id)
    triggers_loaded = asyncio.Event()
    feed = await follow_bucket(runtime.js, TRIGGERS_BUCKET, engine.on_trigger, triggers_loaded)
    stack.push_async_callback(feed.unsubscribe)
    await triggers_loaded.wait()
    # What is loaded now (compiled schedules, every trigger) lives as long as the process: keeping it out of the
    # collector's generations spares the full collections that would otherwise walk it and delay fires.
    gc.collect()
    gc.freeze()
    await engine.start()
    stack.push_async_callback(engine.stop)

    leases = ShardLeases(state, engine, lambda: engine_status(engine))
    await leases.start()
    stack.push_async_callback(leases.stop)
    # Shut-down runs in reverse: the engine drains (fires in flight acknowledged, progress saved) while the
    # leases are still held, then the leases are released, then the engine stops.
    stack.push_async_callback(engine.drain)

    scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(
        SchedulerServicer(state, leases), runtime.grpc.server
    )
    runtime.grpc.add("kairos.v1.SchedulerService")
