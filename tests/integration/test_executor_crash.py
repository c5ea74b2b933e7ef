"""Crash safety with real processes, all executors on one nats-server and one SQLite file (ack_wait 2 s):

- an executor is SIGKILLed in the middle of a run: a second executor process gets the fire redelivered and
  the same run ends completed, never two at once (held past ack_wait, it is kept alive by in-progress acks,
  seen on the wire, and not redelivered again); then a poison fire ends in the dead-letter stream after its
  attempts while a fire of another trigger completes;
- an executor is SIGSTOPped in the middle of a run: another one takes the run over once its lease expired;
  woken with SIGCONT, the stalled one finds its lease gone, stops its attempt and records nothing.

The held run is the `wait_for_release` test agent: it announces itself on a NATS subject and finishes when
the test publishes on another, so the kill lands mid-attempt without any sleep.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio
from google.protobuf import duration_pb2

from kairos.core import messaging
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.devtools.processes import ServiceProcesses
from kairos.v1 import fire_pb2, run_pb2, trigger_pb2

TIMEOUT_S = 60.0
WORKSPACE = "crash"
END_EVENTS = ("run.completed", "run.failed", "run.cancelled", "run.skipped")


@dataclass
class Executors:
    nats_url: str
    database: Path
    launched: ServiceProcesses

    def log_tail(self) -> str:
        return self.launched.log_tail()

    def runs(self) -> list[tuple]:
        with sqlite3.connect(self.database) as db:
            return db.execute("SELECT fire_id, status, attempt FROM runs ORDER BY fire_id").fetchall()


@pytest_asyncio.fixture
async def executors(tmp_path: Path) -> AsyncIterator[Executors]:
    async with EmbeddedNatsServer(tmp_path / "nats") as nats_server:
        database = tmp_path / "executor.db"
        env = {
            "KAIROS_NATS_URL": nats_server.url,
            "KAIROS_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "KAIROS_PYTHON_RUNNER_MODULES": "kairos.agents,kairos.testing_agents",
            "KAIROS_EXECUTOR_ACK_WAIT_S": "2",
        }
        async with ServiceProcesses(tmp_path / "logs", env) as launched:
            yield Executors(nats_server.url, database, launched)


def fire(trigger: str, entry_point: str, fire_id: str, run_input: dict | None = None, **policies) -> tuple[str, bytes]:
    request = fire_pb2.FireRequest(
        fire_id=fire_id,
        trigger=f"workspaces/{WORKSPACE}/triggers/{trigger}",
        trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK,
        action=trigger_pb2.Action(
            agent="agents/test", runner=trigger_pb2.Runner(python=trigger_pb2.PythonRunner(entry_point=entry_point))
        ),
        policies=trigger_pb2.Policies(**policies),
    )
    request.fire_time.GetCurrentTime()
    if run_input:
        request.action.input_template.update(run_input)
    return messaging.fire_subject(WORKSPACE, trigger), request.SerializeToString()


class Watch:
    """The test's NATS connection: held agents announcing themselves, run end events, in-progress acks."""

    def __init__(self, nc) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.ready: asyncio.Queue[dict] = asyncio.Queue()
        self.stopped: asyncio.Queue[dict] = asyncio.Queue()
        self.ended: asyncio.Queue[run_pb2.TraceEvent] = asyncio.Queue()
        self.progress: asyncio.Queue[bytes] = asyncio.Queue()

    @classmethod
    async def connect(cls, nats_url: str) -> Watch:
        watch = cls(await messaging.connect(nats_url, "test-executor-crash"))

        async def on_trace(message) -> None:
            event = run_pb2.TraceEvent.FromString(message.data)
            if event.type in END_EVENTS:
                await watch.ended.put(event)

        async def on_ack(message) -> None:
            if message.data == b"+WPI":
                await watch.progress.put(message.data)

        async def on_ready(message) -> None:
            await watch.ready.put(json.loads(message.data))

        async def on_stopped(message) -> None:
            await watch.stopped.put(json.loads(message.data))

        await watch.nc.subscribe(f"$JS.ACK.{messaging.FIRES_STREAM}.kairos-executor.>", cb=on_ack)
        await watch.nc.subscribe("test.crash.ready", cb=on_ready)
        await watch.nc.subscribe("test.crash.stopped", cb=on_stopped)
        await watch.nc.subscribe(f"{messaging.TRACE_SUBJECT_PREFIX}.{WORKSPACE}.>", cb=on_trace)
        await watch.nc.flush()
        return watch

    def held_input(self, nats_url: str) -> dict:
        return {
            "nats_url": nats_url,
            "ready_subject": "test.crash.ready",
            "stopped_subject": "test.crash.stopped",
            "release_subject": "test.crash.release",
        }

    async def publish(self, subject: str, payload: bytes, fire_id: str) -> None:
        await messaging.publish_fire(self.js, subject, payload, fire_id)

    @staticmethod
    async def next(queue: asyncio.Queue):
        async with asyncio.timeout(TIMEOUT_S):
            return await queue.get()


async def test_sigkill_mid_run_redelivers_to_another_executor_and_poison_is_dead_lettered(
    executors: Executors,
) -> None:
    watch = await Watch.connect(executors.nats_url)
    try:
        first = await executors.launched.launch("executor", label="executor-a")
        subject, payload = fire(
            "held", "kairos.testing_agents:wait_for_release", "held-1", watch.held_input(executors.nats_url)
        )
        await watch.publish(subject, payload, "held-1")
        before = await watch.next(watch.ready)
        await first.kill()
        assert watch.ready.empty() and watch.ended.empty()

        await executors.launched.launch("executor", label="executor-b")
        after = await watch.next(watch.ready)
        assert after["run"] == before["run"], "the redelivered fire resumes the same run"
        # Held longer than ack_wait (2 s): the in-progress acks (every ack_wait / 3) keep it from redelivery.
        for _ in range(4):
            await watch.next(watch.progress)
        assert watch.ready.empty(), "a run kept alive by in-progress acks is not redelivered"
        await watch.nc.publish("test.crash.release", b"go")
        completed = await watch.next(watch.ended)
        assert (completed.fire_id, completed.type, completed.run) == ("held-1", "run.completed", before["run"])
        assert watch.ready.empty(), "the agent ran once after the crash, never twice at once"

        retry = trigger_pb2.RetryPolicy(max_attempts=2, initial_backoff=duration_pb2.Duration(nanos=50_000_000))
        subject, payload = fire("poison", "kairos.testing_agents:fail", "poison-1", retry=retry)
        await watch.publish(subject, payload, "poison-1")
        subject, payload = fire("healthy", "kairos.testing_agents:noop", "healthy-1")
        await watch.publish(subject, payload, "healthy-1")
        outcomes = {}
        while len(outcomes) < 2:
            event = await watch.next(watch.ended)
            outcomes[event.fire_id] = (event.type, event.attempt)
        assert outcomes == {"poison-1": ("run.failed", 2), "healthy-1": ("run.completed", 1)}
        dead = await watch.js.get_last_msg(
            messaging.DEAD_LETTERS_STREAM, messaging.dead_letter_subject(WORKSPACE, "poison")
        )
        assert fire_pb2.FireRequest.FromString(dead.data).fire_id == "poison-1"
    finally:
        await watch.nc.close()

    assert executors.runs() == [
        ("healthy-1", run_pb2.RunStatus.RUN_STATUS_COMPLETED, 1),
        ("held-1", run_pb2.RunStatus.RUN_STATUS_COMPLETED, 1),
        ("poison-1", run_pb2.RunStatus.RUN_STATUS_FAILED, 2),
    ], executors.log_tail()


async def test_a_stalled_executor_loses_its_run_to_another_and_drops_its_attempt_when_it_wakes(
    executors: Executors,
) -> None:
    watch = await Watch.connect(executors.nats_url)
    stalled = await executors.launched.launch("executor", label="executor-stalled")
    try:
        subject, payload = fire(
            "stall", "kairos.testing_agents:wait_for_release", "stall-1", watch.held_input(executors.nats_url)
        )
        await watch.publish(subject, payload, "stall-1")
        before = await watch.next(watch.ready)
        stalled.signal(signal.SIGSTOP)

        await executors.launched.launch("executor", label="executor-live")
        taken_over = await watch.next(watch.ready)
        assert taken_over["run"] == before["run"], "the live executor took the same run over, after the lease"

        stalled.signal(signal.SIGCONT)
        dropped = await watch.next(watch.stopped)
        assert dropped["run"] == before["run"], "woken up, the stalled executor stopped its attempt"
        assert watch.ended.empty(), "and recorded nothing for it"

        await watch.nc.publish("test.crash.release", b"go")
        completed = await watch.next(watch.ended)
        assert (completed.fire_id, completed.type, completed.run) == ("stall-1", "run.completed", before["run"])
        assert watch.ready.empty() and watch.stopped.empty()
    finally:
        if stalled.running:
            stalled.signal(signal.SIGCONT)
        await watch.nc.close()
    assert executors.runs() == [("stall-1", run_pb2.RunStatus.RUN_STATUS_COMPLETED, 1)], executors.log_tail()
    assert "another executor took this run over" in executors.launched.launched["executor-stalled"].log_tail()
