"""Consumes fires from JetStream and runs them: one durable consumer shared by every executor replica.

A fire is acknowledged only after its run is recorded as ended, so a crash mid-run means redelivery, and
the unique fire id on the run means the redelivery resumes that run instead of starting a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import nats.errors
import structlog
from google.protobuf import json_format
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from kairos.core import messaging
from kairos.core.names import parse_trigger
from kairos.core.tasks import spawn
from kairos.executor.runners import AgentError, Runners
from kairos.executor.runs import RunStore, run_name, value_to_python
from kairos.v1 import fire_pb2, run_pb2, trigger_pb2

log = structlog.get_logger(__name__)

DURABLE = "kairos-executor"
DEFAULT_ATTEMPT_DEADLINE_S = 300.0
MAX_DELIVER = 5
Status = run_pb2.RunStatus
TRIGGER_TYPES = {
    run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE: "schedule",
    run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK: "webhook",
    run_pb2.TriggerType.TRIGGER_TYPE_EVENT: "event",
    run_pb2.TriggerType.TRIGGER_TYPE_MANUAL: "manual",
}
AGENT_VERSIONS = {trigger_pb2.AgentVersion.AGENT_VERSION_DRAFT: "draft"}


def run_input(fire: fire_pb2.FireRequest) -> dict[str, Any]:
    """The action's input template, then its prompt, then per-fire overrides on top (each later one wins)."""
    merged: dict[str, Any] = json_format.MessageToDict(fire.action.input_template)
    if fire.action.prompt:
        merged["prompt"] = fire.action.prompt
    merged.update(json_format.MessageToDict(fire.input_overrides))
    return merged


def _iso(stamp, present: bool) -> str | None:
    return stamp.ToDatetime(UTC).isoformat().replace("+00:00", "Z") if present else None


def envelope(fire: fire_pb2.FireRequest, run: str, attempt: int, run_input_: dict[str, Any]) -> dict[str, Any]:
    """The JSON document an agent receives (docs/architecture.md, 'The run envelope')."""
    document = {
        "trigger_type": TRIGGER_TYPES.get(fire.trigger_type, "unknown"),
        "trigger": fire.trigger,
        "run": run,
        "fire_id": fire.fire_id,
        "scheduled_at": _iso(fire.scheduled_time, fire.HasField("scheduled_time")),
        "fired_at": _iso(fire.fire_time, fire.HasField("fire_time")),
        "attempt": attempt,
        "owner": fire.action.owner or None,
        "agent": fire.action.agent,
        "agent_version": AGENT_VERSIONS.get(fire.action.agent_version, "stable"),
        "input": run_input_,
        "payload": value_to_python(fire.payload),
    }
    if fire.webhook:
        document["webhook"] = fire.webhook
    if fire.event_type:
        document["event_type"] = fire.event_type
    return document


class FireWorker:
    """Pulls fires in batches and runs each in its own task, up to `concurrency` at once."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, store: RunStore, runners: Runners, concurrency: int = 64):
        self._nc = nc
        self._js = js
        self._store = store
        self._runners = runners
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.Task | None = None
        self._subscription = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        config = api.ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=DEFAULT_ATTEMPT_DEADLINE_S + 30,
            max_deliver=MAX_DELIVER,
            max_ack_pending=10_000,
        )
        subscription = await self._js.pull_subscribe(
            messaging.FIRES_SUBJECTS, durable=DURABLE, stream=messaging.FIRES_STREAM, config=config
        )
        self._subscription = subscription
        self._loop = spawn(self._pull(subscription), "executor-pull")

    async def stop(self, grace: float = 10.0) -> None:
        """Stops pulling, then gives in-flight runs `grace` seconds before they are left to redelivery."""
        self._stopping.set()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self._subscription is not None:
            # Drop the pull inbox now: a message left in it (a late 408, or one fetch() took without marking
            # it done) would otherwise hold the connection's drain for its whole timeout at shutdown.
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()

    async def _pull(self, subscription) -> None:
        while not self._stopping.is_set():
            free = max(1, self._concurrency - len(self._tasks))
            try:
                messages = await subscription.fetch(batch=min(free, 256), timeout=1.0)
            except TimeoutError:  # nats.errors.TimeoutError, and the bare asyncio.TimeoutError fetch also raises
                continue
            except nats.errors.Error as error:
                log.warning("fetching fires failed; backing off", error=str(error))
                await asyncio.sleep(0.5)
                continue
            for message in messages:
                await self._slots.acquire()
                task = spawn(self._handle(message), "executor-run")
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _trace(self, fire: fire_pb2.FireRequest, kind: str, run: str, **fields: Any) -> None:
        trigger = parse_trigger(fire.trigger, "trigger")
        event = run_pb2.TraceEvent(
            id=f"{fire.fire_id}/{kind}/{fields.get('attempt', 0)}",
            type=kind,
            source="AUTOMATION",
            fire_id=fire.fire_id,
            run=run,
            trigger=fire.trigger,
            **fields,
        )
        event.time.GetCurrentTime()
        with contextlib.suppress(Exception):
            await self._nc.publish(
                messaging.trace_subject(trigger.workspace, trigger.trigger), event.SerializeToString()
            )

    async def _handle(self, message: Msg) -> None:
        try:
            fire = fire_pb2.FireRequest.FromString(message.data)
        except Exception:
            log.error("discarding a fire that is not a FireRequest", subject=message.subject)
            await message.term()
            return
        structlog.contextvars.bind_contextvars(fire_id=fire.fire_id, trigger=fire.trigger)
        try:
            await self._execute(fire)
            await message.ack()
        except Exception:
            log.exception("run failed to record; the fire will be redelivered")
            with contextlib.suppress(Exception):
                await message.nak(delay=1.0)
        finally:
            structlog.contextvars.clear_contextvars()

    async def _execute(self, fire: fire_pb2.FireRequest) -> None:
        inputs = run_input(fire)
        row = await self._store.begin(fire, inputs)
        if row is None:
            log.info("duplicate fire ignored")
            return
        name = run_name(row)
        await self._trace(fire, "run.started", name, attempt=row.attempt, status=Status.RUN_STATUS_RUNNING)
        deadline = fire.policies.attempt_deadline.ToTimedelta().total_seconds() or DEFAULT_ATTEMPT_DEADLINE_S
        started = datetime.now(UTC)
        try:
            output = await self._runners.run(
                fire.action.runner, fire.action.agent, envelope(fire, name, row.attempt, inputs), deadline
            )
            json.dumps(output)
        except TimeoutError:
            row = await self._store.finish(row, Status.RUN_STATUS_TIMED_OUT, error=f"no result within {deadline:g} s")
        except (AgentError, TypeError, ValueError) as error:
            row = await self._store.finish(row, Status.RUN_STATUS_FAILED, error=str(error))
        else:
            row = await self._store.finish(row, Status.RUN_STATUS_COMPLETED, output=output)
        kind = {
            Status.RUN_STATUS_COMPLETED: "run.completed",
            Status.RUN_STATUS_TIMED_OUT: "run.failed",
            Status.RUN_STATUS_CANCELLED: "run.cancelled",
        }.get(row.status, "run.failed")
        elapsed = int((datetime.now(UTC) - started).total_seconds() * 1000)
        await self._trace(
            fire,
            kind,
            name,
            attempt=row.attempt,
            status=row.status,
            duration_ms=elapsed,
            error_message=row.error_message,
        )
        log.info("run ended", run=name, status=Status.Name(row.status), ms=elapsed)
