"""Trigger counters kept by the registry from the trace stream, end to end with real NATS: the executor runs
manual fires of a trigger whose agent fails or succeeds, the scheduler's `trigger.skipped` events (one may stand
for many fires) are published as the scheduler publishes them, and GetTrigger / ListTriggers report
`fire_count`, `last_fire_time`, `consecutive_failures` and `skipped_fire_count`. Trace messages delivered again
(same stream sequences, as JetStream redelivers after a crash between commit and ack) never count twice.

Every wait is on an event (a run's end on the trace subject, or the counter consumer reaching a stream
sequence), bounded by `asyncio.timeout`; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio
from google.protobuf import field_mask_pb2
from nats.js import api

from kairos.client import KairosClient, webhook_trigger
from kairos.core import messaging
from kairos.devtools.suite import Suite, Traces, running_suite, traces_of
from kairos.registry.stats import TriggerStatsConsumer
from kairos.v1 import run_pb2, trigger_pb2, trigger_service_pb2

WORKSPACE = "counted"
COUNT_TIMEOUT_S = 15.0
PASSING = "kairos.testing_agents:noop"
FAILING = "kairos.testing_agents:fail"


@dataclass
class Counting:
    suite: Suite
    kairos: KairosClient
    traces: Traces
    stats: TriggerStatsConsumer

    async def counted(self, trigger_name: str) -> trigger_pb2.TriggerInfo:
        """The trigger's info once every trace event published so far is counted: a marker event published now
        lands after them in the stream, and the consumer applies the stream in order."""
        _, workspace, _, trigger_id = trigger_name.split("/")
        marker = run_pb2.TraceEvent(type="test.marker", trigger=trigger_name)
        ack = await self.suite.runtime.js.publish(
            messaging.trace_subject(workspace, trigger_id), marker.SerializeToString()
        )
        async with asyncio.timeout(COUNT_TIMEOUT_S):
            await self.stats.wait_applied(ack.seq)
        got = await self.kairos.triggers.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=trigger_name))
        return got.trigger.info

    async def run_ends(self, trigger_name: str, expected: str) -> None:
        fire_id = (
            await self.kairos.triggers.FireTrigger(trigger_service_pb2.FireTriggerRequest(name=trigger_name))
        ).fire_id
        ended = await self.traces.wait_for(
            lambda event: event.fire_id == fire_id and event.type in ("run.completed", "run.failed")
        )
        assert ended.type == expected, ended

    async def publish_skipped(self, trigger_name: str, count: int) -> None:
        """A `trigger.skipped` event as the scheduler emits it for missed fires beyond the catch-up window."""
        _, workspace, _, trigger_id = trigger_name.split("/")
        event = run_pb2.TraceEvent(type="trigger.skipped", source="AUTOMATION", trigger=trigger_name, count=count)
        event.time.GetCurrentTime()
        await self.suite.runtime.js.publish(messaging.trace_subject(workspace, trigger_id), event.SerializeToString())


@pytest_asyncio.fixture
async def counting(tmp_path: Path, database_url: str) -> AsyncIterator[Counting]:
    env = {"KAIROS_PYTHON_RUNNER_MODULES": "kairos.agents,kairos.testing_agents"}
    async with running_suite(tmp_path, database_url, ("registry", "executor"), env) as suite:
        key = await suite.new_workspace(WORKSPACE)
        async with suite.client(key) as kairos, traces_of(suite, WORKSPACE) as traces:
            yield Counting(suite, kairos, traces, suite.runtime.extras["trigger_stats"])


def use_agent(trigger_name: str, entry_point: str) -> trigger_service_pb2.UpdateTriggerRequest:
    trigger = webhook_trigger(entry_point=entry_point)
    trigger.name = trigger_name
    return trigger_service_pb2.UpdateTriggerRequest(
        trigger=trigger, update_mask=field_mask_pb2.FieldMask(paths=["action"])
    )


async def test_fires_failures_and_skips_are_counted_on_the_trigger(counting: Counting) -> None:
    kairos = counting.kairos
    created = (
        await kairos.triggers.CreateTrigger(
            trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger(entry_point=PASSING))
        )
    ).trigger
    name = created.name
    assert created.info.fire_count == 0 and not created.info.HasField("last_fire_time")

    await counting.run_ends(name, "run.completed")
    info = await counting.counted(name)
    assert (info.fire_count, info.consecutive_failures, info.skipped_fire_count) == (1, 0, 0)
    first_fire = info.last_fire_time.ToDatetime()

    await kairos.triggers.UpdateTrigger(use_agent(name, FAILING))
    await counting.run_ends(name, "run.failed")
    await counting.run_ends(name, "run.failed")
    info = await counting.counted(name)
    assert (info.fire_count, info.consecutive_failures) == (3, 2)
    assert info.last_fire_time.ToDatetime() > first_fire

    # one scheduler event stands for `count` fires; 0 means one
    await counting.publish_skipped(name, 250)
    await counting.publish_skipped(name, 0)
    info = await counting.counted(name)
    assert info.skipped_fire_count == 251

    updated = await kairos.triggers.UpdateTrigger(use_agent(name, PASSING))
    assert updated.trigger.info.consecutive_failures == 2 and updated.trigger.info.fire_count == 3
    await counting.run_ends(name, "run.completed")
    info = await counting.counted(name)
    assert (info.fire_count, info.consecutive_failures, info.skipped_fire_count) == (4, 0, 251)

    listed = await kairos.triggers.ListTriggers(trigger_service_pb2.ListTriggersRequest())
    assert [(t.name, t.info.fire_count, t.info.skipped_fire_count) for t in listed.triggers] == [(name, 4, 251)]


async def test_trace_events_delivered_again_are_not_counted_twice(counting: Counting) -> None:
    kairos = counting.kairos
    name = (
        await kairos.triggers.CreateTrigger(
            trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger(entry_point=FAILING))
        )
    ).trigger.name
    await counting.run_ends(name, "run.failed")
    await counting.publish_skipped(name, 7)
    counted = await counting.counted(name)
    assert (counted.fire_count, counted.consecutive_failures, counted.skipped_fire_count) == (1, 1, 7)

    # the same messages again, with their stream sequences: what JetStream redelivers when a registry died after
    # committing a batch and before acking it
    _, workspace, _, trigger_id = name.split("/")
    again = await counting.suite.runtime.js.pull_subscribe(
        messaging.trace_subject(workspace, trigger_id),
        stream=messaging.TRACE_STREAM,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE),
    )
    messages = await again.fetch(batch=100, timeout=5)
    assert {"trigger.fired", "run.failed", "trigger.skipped"} <= {
        run_pb2.TraceEvent.FromString(message.data).type for message in messages
    }
    await counting.stats.count(messages)
    await again.unsubscribe()

    info = await counting.counted(name)
    assert (info.fire_count, info.consecutive_failures, info.skipped_fire_count) == (1, 1, 7)
