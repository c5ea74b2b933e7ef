"""The executor's policies against a real nats-server and real databases (SQLite and PostgreSQL), fires
published straight onto KAIROS_FIRES: retries with backoff and their trace, dead letters, overlap (skip,
buffer_one, cancel_other), the daily cap, fires of a paused trigger skipped (each skip with its reason),
CancelRun, pausing a trigger after failures, and the nats runner against a NATS responder (the envelope as
the trigger's owner with its agent version; an agent that never answers ends timed_out at the deadline).

Agents come from `kairos.testing_agents`; a run is held mid-attempt by `wait_for_release` and let go by a
NATS message. Every wait is on a trace event or a change-feed mirror, inside asyncio.timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, json_format

from kairos.client import KairosClient, webhook_trigger
from kairos.core import messaging
from kairos.core.feed import KvMirror
from kairos.devtools.suite import Suite, running_suite
from kairos.executor.policy import backoff_s, local_day
from kairos.v1 import (
    fire_pb2,
    run_pb2,
    run_service_pb2,
    trigger_pb2,
    trigger_service_pb2,
)

TIMEOUT_S = 20.0
WORKSPACE = "acme"
TEST_AGENTS = "kairos.agents,kairos.testing_agents"
Status = run_pb2.RunStatus
Overlap = trigger_pb2.OverlapPolicy
SCHEDULE = run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE
WEBHOOK = run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK
MANUAL = run_pb2.TriggerType.TRIGGER_TYPE_MANUAL
SkipReason = run_pb2.SkipReason


def fast_retry(max_attempts: int) -> trigger_pb2.RetryPolicy:
    return trigger_pb2.RetryPolicy(
        max_attempts=max_attempts,
        initial_backoff=duration_pb2.Duration(nanos=20_000_000),
        max_backoff=duration_pb2.Duration(nanos=50_000_000),
    )


@dataclass
class Executor:
    suite: Suite
    client: KairosClient
    nc: object
    events: list[run_pb2.TraceEvent]
    changed: asyncio.Event

    async def fire(
        self,
        trigger: str,
        entry_point: str,
        *,
        policies: trigger_pb2.Policies | None = None,
        trigger_type: int = WEBHOOK,
        run_input: dict | None = None,
        timezone: str = "",
        http_url: str = "",
        nats_subject: str = "",
        owner: str = "",
        agent_version: int = 0,
    ) -> str:
        fire_id = f"f-{secrets.token_hex(6)}"
        if http_url:
            runner = trigger_pb2.Runner(http=trigger_pb2.HttpRunner(url=http_url))
        elif nats_subject:
            runner = trigger_pb2.Runner(nats=trigger_pb2.NatsRunner(subject=nats_subject))
        else:
            runner = trigger_pb2.Runner(python=trigger_pb2.PythonRunner(entry_point=entry_point))
        action = trigger_pb2.Action(agent="agents/test", runner=runner, owner=owner, agent_version=agent_version)
        request = fire_pb2.FireRequest(
            fire_id=fire_id,
            trigger=f"workspaces/{WORKSPACE}/triggers/{trigger}",
            trigger_type=trigger_type,
            action=action,
            policies=policies or trigger_pb2.Policies(),
            timezone=timezone,
        )
        request.fire_time.GetCurrentTime()
        if run_input:
            request.action.input_template.update(run_input)
        await messaging.publish_fire(
            self.suite.runtime.js, messaging.fire_subject(WORKSPACE, trigger), request.SerializeToString(), fire_id
        )
        return fire_id

    async def wait_event(self, predicate: Callable[[run_pb2.TraceEvent], bool]) -> run_pb2.TraceEvent:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self.changed.clear()
                await self.changed.wait()

    async def ended(self, fire_id: str) -> run_pb2.TraceEvent:
        return await self.wait_event(
            lambda e: e.fire_id == fire_id and e.type in ("run.completed", "run.failed", "run.cancelled", "run.skipped")
        )

    async def run(self, name: str) -> run_pb2.Run:
        return (await self.client.runs.GetRun(run_service_pb2.GetRunRequest(name=name))).run

    def holding(self) -> Held:
        return Held(self, secrets.token_hex(4))


class Held:
    """Input for `wait_for_release` runs, and the NATS subjects to know they started and to let them finish."""

    def __init__(self, executor: Executor, tag: str) -> None:
        self._executor = executor
        self.ready_subject = f"test.ready.{tag}"
        self.release_subject = f"test.release.{tag}"
        self.ready: asyncio.Queue[dict] = asyncio.Queue()

    async def start(self) -> None:
        async def on_ready(message) -> None:
            await self.ready.put(json.loads(message.data))

        await self._executor.nc.subscribe(self.ready_subject, cb=on_ready)
        await self._executor.nc.flush()

    @property
    def input(self) -> dict:
        return {
            "nats_url": self._executor.suite.nats_url,
            "ready_subject": self.ready_subject,
            "release_subject": self.release_subject,
        }

    async def next_ready(self) -> dict:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.ready.get()

    async def release(self) -> None:
        await self._executor.nc.publish(self.release_subject, b"go")
        await self._executor.nc.flush()


@asynccontextmanager
async def connect_executor(tmp_path: Path, database_url: str, env: dict[str, str]) -> AsyncIterator[Executor]:
    """The registry and the executor in-process with the test agents allowed, a workspace, a client, and
    every trace event of the workspace collected from the start."""
    async with running_suite(tmp_path, database_url, services=("registry", "executor"), env=env) as suite:
        key = await suite.new_workspace(WORKSPACE)
        nc = await messaging.connect(suite.nats_url, "test-executor")
        events: list[run_pb2.TraceEvent] = []
        changed = asyncio.Event()

        async def on_trace(message) -> None:
            events.append(run_pb2.TraceEvent.FromString(message.data))
            changed.set()

        await nc.subscribe(f"{messaging.TRACE_SUBJECT_PREFIX}.{WORKSPACE}.>", cb=on_trace)
        await nc.flush()
        try:
            async with suite.client(key) as client:
                yield Executor(suite, client, nc, events, changed)
        finally:
            await nc.close()


@pytest_asyncio.fixture
async def executor(tmp_path: Path, database_url: str) -> AsyncIterator[Executor]:
    async with connect_executor(tmp_path, database_url, {"KAIROS_PYTHON_RUNNER_MODULES": TEST_AGENTS}) as running:
        yield running


async def test_retries_with_backoff_then_completes_and_the_trace_tells_the_story(executor: Executor) -> None:
    fire_id = await executor.fire(
        "flaky",
        "kairos.testing_agents:flaky",
        policies=trigger_pb2.Policies(retry=fast_retry(3)),
        run_input={"succeed_on_attempt": 2},
    )
    ended = await executor.ended(fire_id)
    assert (ended.type, ended.attempt, ended.source) == ("run.completed", 2, "AUTOMATION")
    run = await executor.run(ended.run)
    assert run.status == Status.RUN_STATUS_COMPLETED
    assert run.attempt == 2
    assert json_format.MessageToDict(run.output) == {"succeeded_on_attempt": 2}

    trace = (await executor.client.runs.GetRunTrace(run_service_pb2.GetRunTraceRequest(name=ended.run))).events
    assert [(event.type, event.attempt) for event in trace] == [
        ("trigger.fired", 0),
        ("run.started", 1),
        ("run.retrying", 1),
        ("run.started", 2),
        ("run.completed", 2),
    ]
    assert {event.fire_id for event in trace} == {fire_id}
    assert {event.run for event in trace[1:]} == {ended.run}
    assert "fails on purpose" in trace[2].error_message
    assert trace[-1].duration_ms >= 0


async def test_poison_fire_is_dead_lettered_after_its_attempts_and_others_still_run(executor: Executor) -> None:
    poison = await executor.fire(
        "poison", "kairos.testing_agents:fail", policies=trigger_pb2.Policies(retry=fast_retry(3))
    )
    healthy = await executor.fire("healthy", "kairos.testing_agents:noop")
    assert (await executor.ended(healthy)).type == "run.completed"

    failed = await executor.ended(poison)
    assert (failed.type, failed.attempt) == ("run.failed", 3)
    assert "always fails" in failed.error_message
    run = await executor.run(failed.run)
    assert (run.status, run.attempt) == (Status.RUN_STATUS_FAILED, 3)

    js = executor.suite.runtime.js
    dead = await js.get_last_msg(messaging.DEAD_LETTERS_STREAM, messaging.dead_letter_subject(WORKSPACE, "poison"))
    assert fire_pb2.FireRequest.FromString(dead.data).fire_id == poison
    assert dead.headers["Kairos-Run"] == failed.run


async def test_overlap_skip_is_the_schedule_default_and_daily_cap_skips_beyond_the_cap(executor: Executor) -> None:
    held = executor.holding()
    await held.start()
    first = await executor.fire(
        "nightly", "kairos.testing_agents:wait_for_release", trigger_type=SCHEDULE, run_input=held.input
    )
    await held.next_ready()
    second = await executor.fire("nightly", "kairos.testing_agents:noop", trigger_type=SCHEDULE)
    skipped = await executor.ended(second)
    assert (skipped.type, skipped.skip_reason) == ("run.skipped", SkipReason.SKIP_REASON_OVERLAP)
    run = await executor.run(skipped.run)
    assert (run.status_reason, run.skip_reason) == ("overlap", SkipReason.SKIP_REASON_OVERLAP)
    await held.release()
    assert (await executor.ended(first)).type == "run.completed"

    capped = trigger_pb2.Policies(max_runs_per_day=1)
    allowed = await executor.fire("capped", "kairos.testing_agents:noop", policies=capped, timezone="Asia/Tokyo")
    assert (await executor.ended(allowed)).type == "run.completed"
    beyond = await executor.fire("capped", "kairos.testing_agents:noop", policies=capped, timezone="Asia/Tokyo")
    over = await executor.ended(beyond)
    assert (over.type, over.skip_reason) == ("run.skipped", SkipReason.SKIP_REASON_DAILY_CAP)
    run = await executor.run(over.run)
    assert (run.status, run.status_reason) == (Status.RUN_STATUS_SKIPPED, "daily cap")
    assert run.skip_reason == SkipReason.SKIP_REASON_DAILY_CAP
    trace = (await executor.client.runs.GetRunTrace(run_service_pb2.GetRunTraceRequest(name=over.run))).events
    assert [(event.type, event.skip_reason) for event in trace] == [
        ("trigger.fired", SkipReason.SKIP_REASON_UNSPECIFIED),
        ("run.skipped", SkipReason.SKIP_REASON_DAILY_CAP),
    ]


async def test_a_fire_of_a_paused_trigger_is_skipped_unless_it_is_manual(executor: Executor) -> None:
    created = await executor.client.triggers.CreateTrigger(
        trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger(entry_point="kairos.testing_agents:noop"))
    )
    trigger_id = created.trigger.name.rsplit("/", 1)[1]
    before = await executor.fire(trigger_id, "kairos.testing_agents:noop")
    assert (await executor.ended(before)).type == "run.completed"

    await executor.client.triggers.PauseTrigger(
        trigger_service_pb2.PauseTriggerRequest(name=created.trigger.name, note="maintenance")
    )
    seen_by_executor: KvMirror[trigger_pb2.Trigger] = executor.suite.runtime.extras["executor.triggers"]
    async with asyncio.timeout(TIMEOUT_S):
        await seen_by_executor.wait_until(
            f"{WORKSPACE}.{trigger_id}",
            lambda trigger: trigger is not None and trigger.state == trigger_pb2.TriggerState.TRIGGER_STATE_PAUSED,
        )
    paused = await executor.fire(trigger_id, "kairos.testing_agents:noop")
    skipped = await executor.ended(paused)
    assert (skipped.type, skipped.skip_reason) == ("run.skipped", SkipReason.SKIP_REASON_PAUSED)
    run = await executor.run(skipped.run)
    assert (run.status, run.skip_reason, run.status_reason) == (
        Status.RUN_STATUS_SKIPPED,
        SkipReason.SKIP_REASON_PAUSED,
        "paused",
    )
    manual = await executor.fire(trigger_id, "kairos.testing_agents:noop", trigger_type=MANUAL)
    ran = await executor.ended(manual)
    assert (ran.type, ran.skip_reason) == ("run.completed", SkipReason.SKIP_REASON_UNSPECIFIED)


async def test_buffer_one_keeps_one_waiting_and_cancel_run_stops_a_pending_one(executor: Executor) -> None:
    buffer_one = trigger_pb2.Policies(overlap=Overlap.OVERLAP_POLICY_BUFFER_ONE)
    held = executor.holding()
    await held.start()
    agent = "kairos.testing_agents:wait_for_release"
    first = await executor.fire("buffered", agent, policies=buffer_one, run_input=held.input)
    await held.next_ready()
    second = await executor.fire("buffered", agent, policies=buffer_one, run_input=held.input)
    third = await executor.fire("buffered", agent, policies=buffer_one, run_input=held.input)
    assert (await executor.ended(third)).type == "run.skipped"

    await held.release()
    assert (await executor.ended(first)).type == "run.completed"
    started = await held.next_ready()
    assert started["run"] == (await executor.wait_event(lambda e: e.fire_id == second and e.type == "run.started")).run
    await held.release()
    assert (await executor.ended(second)).type == "run.completed"

    # A pending run (buffered behind a running one) is cancelled and never starts.
    fourth = await executor.fire("buffered", agent, policies=buffer_one, run_input=held.input)
    await held.next_ready()
    fifth = await executor.fire("buffered", agent, policies=buffer_one, run_input=held.input)
    queued = await executor.wait_event(lambda e: e.fire_id == fifth and e.type == "run.queued")
    listed = await executor.client.runs.ListRuns(
        run_service_pb2.ListRunsRequest(parent=queued.trigger, status=Status.RUN_STATUS_PENDING)
    )
    [pending] = listed.runs
    assert (pending.fire_id, pending.name) == (fifth, queued.run)
    cancelled = await executor.client.runs.CancelRun(run_service_pb2.CancelRunRequest(name=pending.name))
    assert cancelled.run.status == Status.RUN_STATUS_CANCELLED
    await held.release()
    assert (await executor.ended(fourth)).type == "run.completed"
    trace = (await executor.client.runs.GetRunTrace(run_service_pb2.GetRunTraceRequest(name=pending.name))).events
    assert "run.started" not in [event.type for event in trace]
    assert (await executor.run(pending.name)).status == Status.RUN_STATUS_CANCELLED


async def test_cancel_other_and_cancel_run_stop_running_runs(executor: Executor) -> None:
    cancel_other = trigger_pb2.Policies(overlap=Overlap.OVERLAP_POLICY_CANCEL_OTHER)
    held = executor.holding()
    await held.start()
    agent = "kairos.testing_agents:wait_for_release"
    first = await executor.fire("newest", agent, policies=cancel_other, run_input=held.input)
    await held.next_ready()
    second = await executor.fire("newest", agent, policies=cancel_other, run_input=held.input)
    assert (await executor.ended(first)).type == "run.cancelled"
    started = await held.next_ready()
    assert started["run"]
    await held.release()
    assert (await executor.ended(second)).type == "run.completed"

    third = await executor.fire("manual-stop", agent, run_input=held.input)
    ready = await held.next_ready()
    response = await executor.client.runs.CancelRun(run_service_pb2.CancelRunRequest(name=ready["run"]))
    assert response.run.status == Status.RUN_STATUS_CANCELLED
    ended = await executor.ended(third)
    assert (ended.type, ended.run) == ("run.cancelled", ready["run"])
    assert (await executor.run(ready["run"])).status == Status.RUN_STATUS_CANCELLED


async def test_trigger_is_paused_after_consecutive_failures_with_a_note(executor: Executor) -> None:
    created = await executor.client.triggers.CreateTrigger(
        trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger(entry_point="kairos.testing_agents:fail"))
    )
    trigger_id = created.trigger.name.rsplit("/", 1)[1]
    policies = trigger_pb2.Policies(pause_after_failures=2)
    mirror: KvMirror[trigger_pb2.Trigger] = KvMirror(executor.suite.runtime.buckets.triggers, trigger_pb2.Trigger)
    await mirror.start()
    try:
        for _ in range(2):
            fire_id = await executor.fire(trigger_id, "kairos.testing_agents:fail", policies=policies)
            assert (await executor.ended(fire_id)).type == "run.failed"
        async with asyncio.timeout(TIMEOUT_S):
            record = await mirror.wait_until(
                f"{WORKSPACE}.{trigger_id}",
                lambda trigger: trigger is not None and trigger.state == trigger_pb2.TriggerState.TRIGGER_STATE_PAUSED,
            )
    finally:
        await mirror.stop()
    assert "2 consecutive failed runs" in record.state_note


def test_backoff_grows_exponentially_is_capped_and_jittered_and_days_follow_the_time_zone() -> None:
    retry = trigger_pb2.RetryPolicy(
        initial_backoff=duration_pb2.Duration(seconds=1),
        max_backoff=duration_pb2.Duration(seconds=5),
        backoff_multiplier=3,
    )
    low, high = random.Random(0), random.Random(0)
    low.random, high.random = (lambda: 0.0), (lambda: 0.999999)
    assert [backoff_s(retry, attempt, low) for attempt in (1, 2, 3)] == [0.5, 1.5, 2.5]
    assert [round(backoff_s(retry, attempt, high), 3) for attempt in (1, 2, 3)] == [1.0, 3.0, 5.0]
    assert backoff_s(trigger_pb2.RetryPolicy(), 2, high) == pytest.approx(2.0)

    late_evening_in_tokyo = datetime(2026, 3, 1, 14, 30, tzinfo=UTC)  # 23:30 JST
    start, end = local_day(late_evening_in_tokyo, "Asia/Tokyo")
    assert (start, end) == (datetime(2026, 2, 28, 15, tzinfo=UTC), datetime(2026, 3, 1, 15, tzinfo=UTC))
    spring_forward = local_day(datetime(2026, 3, 8, 12, tzinfo=UTC), "America/New_York")
    assert spring_forward[1] - spring_forward[0] == timedelta(hours=23)


async def test_a_runner_subject_of_kairos_itself_fails_the_run_and_sends_nothing(executor: Executor) -> None:
    """A trigger stored before the registry refused such subjects (or put in the feed by hand) must not let a
    workspace publish into another's events: the executor refuses the subject itself."""
    received = []

    async def on_event(message) -> None:
        received.append(message.subject)

    await executor.nc.subscribe("kairos.events.>", cb=on_event)
    await executor.nc.flush()
    fire_id = await executor.fire("hijack", "", nats_subject="kairos.events.victim.thread.created")
    ended = await executor.ended(fire_id)
    assert (ended.type, ended.status) == ("run.failed", Status.RUN_STATUS_FAILED)
    assert "is one of Kairos' own" in ended.error_message
    await executor.nc.flush()  # anything the run had sent would be here by now
    assert received == []


async def test_nats_runner_gets_the_envelope_as_the_owner_and_a_silent_agent_times_out(executor: Executor) -> None:
    envelopes: list[dict] = []

    async def agent(message) -> None:
        envelopes.append(json.loads(message.data))
        await message.respond(json.dumps({"summary": "done", "echo": envelopes[-1]["input"]}).encode())

    async def silent_agent(message) -> None:
        envelopes.append(json.loads(message.data))

    await executor.nc.subscribe("test.agents.answering", cb=agent)
    await executor.nc.subscribe("test.agents.silent", cb=silent_agent)
    await executor.nc.flush()

    fire_id = await executor.fire(
        "over-nats",
        "",
        nats_subject="test.agents.answering",
        run_input={"topic": "q3"},
        owner="users/ada",
        agent_version=trigger_pb2.AgentVersion.AGENT_VERSION_DRAFT,
    )
    ended = await executor.ended(fire_id)
    assert ended.type == "run.completed"
    [envelope] = envelopes
    assert (envelope["run"], envelope["fire_id"], envelope["attempt"]) == (ended.run, fire_id, 1)
    assert (envelope["owner"], envelope["agent_version"], envelope["trigger_type"]) == ("users/ada", "draft", "webhook")
    assert envelope["input"] == {"topic": "q3"}
    run = await executor.run(ended.run)
    assert json_format.MessageToDict(run.output) == {"summary": "done", "echo": {"topic": "q3"}}
    assert (run.owner, run.agent_version) == ("users/ada", trigger_pb2.AgentVersion.AGENT_VERSION_DRAFT)

    deadline = trigger_pb2.Policies(
        attempt_deadline=duration_pb2.Duration(nanos=200_000_000), retry=trigger_pb2.RetryPolicy(max_attempts=1)
    )
    silent = await executor.fire("silent", "", nats_subject="test.agents.silent", policies=deadline)
    timed_out = await executor.ended(silent)
    assert (timed_out.type, timed_out.status) == ("run.failed", Status.RUN_STATUS_TIMED_OUT)
    assert "no result within 0.2 s" in timed_out.error_message
    assert len(envelopes) == 2, "the silent agent was asked once"
