"""Crash safety with real processes: an executor is SIGKILLed in the middle of a run, a second executor
process gets the fire redelivered (ack_wait 2 s) and the same run ends completed, never two at once (held past
ack_wait, it is kept alive by in-progress acks, seen on the wire, and not redelivered again); then a
poison fire ends in the dead-letter stream after its attempts while a fire of another trigger completes.

The held run is the `wait_for_release` test agent: it announces itself on a NATS subject and finishes when
the test publishes on another, so the kill lands mid-attempt without any sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest_asyncio
from google.protobuf import duration_pb2

from kairos.core import messaging
from kairos.core.natsserver import EmbeddedNatsServer, free_port
from kairos.devtools.suite import wait_serving
from kairos.v1 import fire_pb2, run_pb2, trigger_pb2

TIMEOUT_S = 60.0
WORKSPACE = "crash"


class Executors:
    """Starts executor processes on one nats-server and one SQLite file; kills or stops them."""

    def __init__(self, stack: AsyncExitStack, tmp_path: Path, nats_url: str) -> None:
        self._stack = stack
        self._tmp_path = tmp_path
        self.nats_url = nats_url
        self.database = tmp_path / "executor.db"
        self.running: list[asyncio.subprocess.Process] = []

    async def start(self, name: str) -> asyncio.subprocess.Process:
        port = free_port()
        env = {
            **os.environ,
            "KAIROS_NATS_URL": self.nats_url,
            "KAIROS_DATABASE_URL": f"sqlite+aiosqlite:///{self.database}",
            "KAIROS_GRPC_PORT": str(port),
            "KAIROS_PYTHON_RUNNER_MODULES": "kairos.agents,kairos.testing_agents",
            "KAIROS_EXECUTOR_ACK_WAIT_S": "2",
            "KAIROS_LOG_FORMAT": "json",
        }
        log = (self._tmp_path / f"{name}.log").open("wb")
        self._stack.callback(log.close)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kairos.executor", env=env, stdout=log, stderr=log
        )
        self.running.append(process)
        assert await wait_serving(f"127.0.0.1:{port}", TIMEOUT_S)
        return process

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self._tmp_path.glob("*.log")))


@pytest_asyncio.fixture
async def executors(tmp_path: Path) -> AsyncIterator[Executors]:
    async with AsyncExitStack() as stack:
        nats_server = await stack.enter_async_context(EmbeddedNatsServer(tmp_path / "nats"))
        result = Executors(stack, tmp_path, nats_server.url)
        try:
            yield result
        finally:
            for process in result.running:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            for process in result.running:
                try:
                    async with asyncio.timeout(20):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()


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


async def test_sigkill_mid_run_redelivers_to_another_executor_and_poison_is_dead_lettered(
    executors: Executors,
) -> None:
    nc = await messaging.connect(executors.nats_url, "test-executor-crash")
    try:
        ready: asyncio.Queue[dict] = asyncio.Queue()
        ended: asyncio.Queue[run_pb2.TraceEvent] = asyncio.Queue()

        async def on_ready(message) -> None:
            await ready.put(json.loads(message.data))

        async def on_trace(message) -> None:
            event = run_pb2.TraceEvent.FromString(message.data)
            if event.type in ("run.completed", "run.failed", "run.cancelled", "run.skipped"):
                await ended.put(event)

        progress: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_ack(message) -> None:
            if message.data == b"+WPI":
                await progress.put(message.data)

        await nc.subscribe(f"$JS.ACK.{messaging.FIRES_STREAM}.kairos-executor.>", cb=on_ack)
        await nc.subscribe("test.crash.ready", cb=on_ready)
        await nc.subscribe(f"{messaging.TRACE_SUBJECT_PREFIX}.{WORKSPACE}.>", cb=on_trace)
        await nc.flush()

        first = await executors.start("executor-a")
        js = nc.jetstream()
        held_input = {
            "nats_url": executors.nats_url,
            "ready_subject": "test.crash.ready",
            "release_subject": "test.crash.release",
        }
        subject, payload = fire("held", "kairos.testing_agents:wait_for_release", "held-1", held_input)
        await messaging.publish_fire(js, subject, payload, "held-1")
        async with asyncio.timeout(TIMEOUT_S):
            before = await ready.get()
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert ready.empty() and ended.empty()

        await executors.start("executor-b")
        async with asyncio.timeout(TIMEOUT_S):
            after = await ready.get()
        assert after["run"] == before["run"], "the redelivered fire resumes the same run"
        # Held longer than ack_wait (2 s): the in-progress acks (every ack_wait / 3) keep it from redelivery.
        async with asyncio.timeout(TIMEOUT_S):
            for _ in range(4):
                await progress.get()
        assert ready.empty(), "a run kept alive by in-progress acks is not redelivered"
        await nc.publish("test.crash.release", b"go")
        async with asyncio.timeout(TIMEOUT_S):
            completed = await ended.get()
        assert (completed.fire_id, completed.type, completed.run) == ("held-1", "run.completed", before["run"])
        assert ready.empty(), "the agent ran once after the crash, never twice at once"

        retry = trigger_pb2.RetryPolicy(max_attempts=2, initial_backoff=duration_pb2.Duration(nanos=50_000_000))
        subject, payload = fire("poison", "kairos.testing_agents:fail", "poison-1", retry=retry)
        await messaging.publish_fire(js, subject, payload, "poison-1")
        subject, payload = fire("healthy", "kairos.testing_agents:noop", "healthy-1")
        await messaging.publish_fire(js, subject, payload, "healthy-1")
        outcomes = {}
        async with asyncio.timeout(TIMEOUT_S):
            while len(outcomes) < 2:
                event = await ended.get()
                outcomes[event.fire_id] = (event.type, event.attempt)
        assert outcomes == {"poison-1": ("run.failed", 2), "healthy-1": ("run.completed", 1)}
        dead = await js.get_last_msg(messaging.DEAD_LETTERS_STREAM, messaging.dead_letter_subject(WORKSPACE, "poison"))
        assert fire_pb2.FireRequest.FromString(dead.data).fire_id == "poison-1"
    finally:
        await nc.close()

    with sqlite3.connect(executors.database) as db:
        rows = db.execute("SELECT fire_id, status, attempt FROM runs ORDER BY fire_id").fetchall()
    assert rows == [
        ("healthy-1", run_pb2.RunStatus.RUN_STATUS_COMPLETED, 1),
        ("held-1", run_pb2.RunStatus.RUN_STATUS_COMPLETED, 1),
        ("poison-1", run_pb2.RunStatus.RUN_STATUS_FAILED, 2),
    ], executors.log_tail()
