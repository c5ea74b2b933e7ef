"""Composition root of the scheduler: follows the trigger change feed and runs the timer heap."""

from __future__ import annotations

from contextlib import AsyncExitStack

from kairos.core.auth import require_admin
from kairos.core.feed import KvMirror
from kairos.core.names import new_id
from kairos.core.runtime import Runtime
from kairos.scheduler.engine import SchedulerEngine
from kairos.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc, trigger_pb2


class SchedulerServicer(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, engine: SchedulerEngine) -> None:
        self._engine = engine

    async def GetSchedulerStatus(self, request, context):
        require_admin()
        p50, p99 = self._engine.lag_percentiles()
        replica = scheduler_service_pb2.SchedulerReplica(
            id=self._engine.replica_id,
            scheduled_triggers=self._engine.scheduled_triggers,
            fire_lag_p50_ms=p50,
            fire_lag_p99_ms=p99,
            fires_published=self._engine.fires_published,
        )
        replica.heartbeat_time.GetCurrentTime()
        return scheduler_service_pb2.GetSchedulerStatusResponse(replicas=[replica])


async def start(stack: AsyncExitStack, runtime: Runtime) -> None:
    engine = SchedulerEngine(runtime.js, runtime.buckets.scheduler, replica_id=new_id("sched"))
    await engine.start()
    stack.push_async_callback(engine.stop)
    triggers: KvMirror[trigger_pb2.Trigger] = KvMirror(runtime.buckets.triggers, trigger_pb2.Trigger, engine.on_change)
    await triggers.start()
    stack.push_async_callback(triggers.stop)

    scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(engine), runtime.grpc.server)
    runtime.grpc.add("kairos.v1.SchedulerService")
