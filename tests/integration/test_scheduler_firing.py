"""The scheduler against a real nats-server, registry and executor (one process, the scheduler as its own
`run_services` so it can be stopped and started): a restart neither repeats nor forgets a fire and counts
and emits the ones its catch-up policy skips; pause, resume, update and delete take effect promptly; jitter
delays the publish but not the scheduled instant."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest_asyncio
from google.protobuf import duration_pb2, field_mask_pb2

from kairos.client import KairosClient, schedule_trigger
from kairos.core.config import ServiceConfig
from kairos.core.runtime import run_services
from kairos.core.schedule import compile_schedule
from kairos.devtools.suite import Suite, running_suite
from kairos.scheduler.state import read_progress
from kairos.v1 import run_pb2, run_service_pb2, trigger_pb2, trigger_service_pb2

WAIT_S = 20
ONE_SECOND = timedelta(seconds=1)


class Traces:
    """Every trace event of the workspace, collected in the background; `wait_for` blocks on a condition."""

    def __init__(self) -> None:
        self.events: list[run_pb2.TraceEvent] = []
        self._changed = asyncio.Condition()

    async def collect(self, subscription) -> None:
        async for message in subscription.messages:
            async with self._changed:
                self.events.append(run_pb2.TraceEvent.FromString(message.data))
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[run_pb2.TraceEvent]], bool]) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: predicate(self.events))

    def instants(self, trigger: str, kind: str = "run.completed") -> list[datetime]:
        return sorted(
            datetime.fromisoformat(e.fire_id.rsplit("@", 1)[1])
            for e in self.events
            if e.trigger == trigger and e.type == kind
        )


@asynccontextmanager
async def scheduler(suite: Suite) -> AsyncIterator[None]:
    """A scheduler replica of its own, stopped cleanly on exit."""
    config = ServiceConfig.from_env({"KAIROS_NATS_URL": suite.nats_url, "KAIROS_GRPC_PORT": "0"})
    ready, stop = asyncio.Event(), asyncio.Event()

    async def on_ready(_runtime) -> None:
        ready.set()

    task = asyncio.create_task(run_services(("scheduler",), config, on_ready=on_ready, stop=stop, handle_signals=False))
    await asyncio.wait({task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield
    finally:
        stop.set()
        await task


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Suite, KairosClient, Traces]]:
    async with running_suite(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'kairos.db'}", ("registry", "executor")
    ) as suite:
        key = await suite.new_workspace("acme")
        tracer = await nats.connect(suite.nats_url)
        traces = Traces()
        collector = asyncio.create_task(traces.collect(await tracer.subscribe("kairos.trace.acme.>")))
        try:
            async with suite.client(key) as kairos:
                yield suite, kairos, traces
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            await tracer.close()


async def create_every_second(kairos: KairosClient, **schedule_fields) -> trigger_pb2.Trigger:
    trigger = schedule_trigger(every=ONE_SECOND, prompt="tick")
    trigger.policies.overlap = trigger_pb2.OverlapPolicy.OVERLAP_POLICY_ALLOW
    for field, value in schedule_fields.items():
        getattr(trigger.source.schedule, field).CopyFrom(value)
    return (await kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=trigger))).trigger


def fire_times(trigger: trigger_pb2.Trigger, start: datetime, end: datetime) -> list[datetime]:
    schedule = compile_schedule(trigger.source.schedule, anchor=trigger.create_time.ToDatetime(UTC))
    return list(schedule.fires_between(start, end))


async def test_restart_catches_up_latest_once_and_counts_the_skipped(env) -> None:
    suite, kairos, traces = env
    async with scheduler(suite):
        trigger = await create_every_second(kairos)
        await traces.wait_for(lambda _: len(traces.instants(trigger.name)) >= 2)
    feed_key = f"acme.{trigger.name.rsplit('/', 1)[1]}"
    last_fired = (await read_progress(suite.runtime.buckets.scheduler, feed_key)).last_fired
    assert last_fired is not None and last_fired >= traces.instants(trigger.name)[-1]
    # The scenario is downtime: let at least three fire times pass with no scheduler running.
    await asyncio.sleep(max(0.0, (last_fired + 3.5 * ONE_SECOND - datetime.now(UTC)).total_seconds()))
    restarted_at = datetime.now(UTC)
    missed_while_down = fire_times(trigger, last_fired, restarted_at)
    assert len(missed_while_down) >= 3

    async with scheduler(suite):
        await traces.wait_for(lambda _: len([t for t in traces.instants(trigger.name) if t > restarted_at]) >= 2)
    ran = [t for t in traces.instants(trigger.name) if t > last_fired]
    skipped = traces.instants(trigger.name, "trigger.skipped")
    assert skipped and not set(skipped) & set(ran)
    assert max(skipped) < min(ran), "LATEST runs the most recent missed fire, never an older one"
    assert sorted(skipped + ran) == fire_times(trigger, last_fired, max(ran)), "no fire forgotten"
    assert len(skipped) >= len(missed_while_down) - 1
    assert [t for t in ran if t <= restarted_at] == [max(missed_while_down)] or min(ran) > restarted_at
    assert all(e.status == run_pb2.RunStatus.RUN_STATUS_SKIPPED for e in traces.events if e.type == "trigger.skipped")

    progress = await read_progress(suite.runtime.buckets.scheduler, feed_key)
    assert progress.skipped == len(skipped)
    assert sum(max(e.count, 1) for e in traces.events if e.type == "trigger.skipped") == progress.skipped
    runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger.name, page_size=1000))).runs
    fired = [r.fire_id for r in runs]
    assert len(fired) == len(set(fired)), "no fire repeated"
    assert {r.scheduled_time.ToDatetime(UTC) for r in runs}.isdisjoint(skipped)


async def test_pause_resume_update_and_delete_take_effect_promptly(env) -> None:
    suite, kairos, traces = env
    async with scheduler(suite):
        clock = await create_every_second(kairos)
        subject = await create_every_second(kairos)

        async def clock_passes(instant: datetime) -> None:
            await traces.wait_for(lambda _: any(t >= instant for t in traces.instants(clock.name)))

        await traces.wait_for(lambda _: len(traces.instants(subject.name)) >= 1)
        paused = (
            await kairos.triggers.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(name=subject.name))
        ).trigger
        paused_at = paused.update_time.ToDatetime(UTC)
        await clock_passes(paused_at + 3 * ONE_SECOND)
        assert all(t <= paused_at + ONE_SECOND for t in traces.instants(subject.name, "run.started"))

        resumed = (
            await kairos.triggers.ResumeTrigger(trigger_service_pb2.ResumeTriggerRequest(name=subject.name))
        ).trigger
        resumed_at = resumed.update_time.ToDatetime(UTC)
        await traces.wait_for(lambda _: any(t > resumed_at for t in traces.instants(subject.name)))
        after_resume = [t for t in traces.instants(subject.name, "run.started") if t > paused_at + ONE_SECOND]
        assert min(after_resume) > resumed_at, "fires missed while paused are not caught up"
        assert min(after_resume) <= resumed_at + 2 * ONE_SECOND

        patch = trigger_pb2.Trigger(name=subject.name)
        patch.source.schedule.cron.expression = "*/2 * * * * *"
        updated = (
            await kairos.triggers.UpdateTrigger(
                trigger_service_pb2.UpdateTriggerRequest(
                    trigger=patch, update_mask=field_mask_pb2.FieldMask(paths=["source"])
                )
            )
        ).trigger
        updated_at = updated.update_time.ToDatetime(UTC)
        await traces.wait_for(lambda _: len([t for t in traces.instants(subject.name) if t > updated_at]) >= 2)
        await clock_passes(updated_at + 4 * ONE_SECOND)
        since_update = [t for t in traces.instants(subject.name, "run.started") if t > updated_at]
        assert since_update and all(t.microsecond == 0 and t.second % 2 == 0 for t in since_update), since_update

        await kairos.triggers.DeleteTrigger(trigger_service_pb2.DeleteTriggerRequest(name=subject.name))
        deleted_at = datetime.now(UTC)
        await clock_passes(deleted_at + 3 * ONE_SECOND)
        assert all(t <= deleted_at + ONE_SECOND for t in traces.instants(subject.name, "run.started"))


async def test_jitter_delays_the_publish_not_the_scheduled_instant(env) -> None:
    suite, kairos, traces = env
    async with scheduler(suite):
        trigger = await create_every_second(kairos, jitter=duration_pb2.Duration(nanos=800_000_000))
        await traces.wait_for(lambda _: len(traces.instants(trigger.name)) >= 3)
    schedule = compile_schedule(trigger.source.schedule, anchor=trigger.create_time.ToDatetime(UTC))
    runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger.name))).runs
    assert len(runs) >= 3
    for run in runs:
        scheduled = run.scheduled_time.ToDatetime(UTC)
        assert scheduled in fire_times(trigger, scheduled - ONE_SECOND, scheduled)
        assert run.fire_time.ToDatetime(UTC) >= scheduled + schedule.jitter_for(scheduled, trigger.name)
