"""Consumes fires from JetStream and runs them: one durable consumer shared by every executor replica.

A fire is acknowledged only after its run is recorded as ended, so a crash mid-run means redelivery, and
the unique fire id on the run means the redelivery resumes that run instead of starting a second one.
While an attempt runs, the message gets in-progress acks and the run's lease is renewed every third of
`ack_wait`, so only a dead or stalled executor lets it be redelivered; the executor that gets it then takes
the run over once the lease expired, and the stalled one, when it wakes up, finds its lease gone at its next
renewal, stops its attempt and writes nothing (its writes are fenced by the lease token).

A failed attempt with attempts left is nak'ed with the backoff as delay: the retry holds no consumer slot and
no task, so a poison fire never blocks the fires behind it. After the last attempt the fire is copied to the
dead-letter stream and the run ends failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
import structlog
from google.protobuf import json_format
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from kairos.core import messaging
from kairos.core.feed import KvMirror
from kairos.core.tasks import spawn
from kairos.executor.models import RunRow
from kairos.executor.notify import Callbacks
from kairos.executor.policy import backoff_s, max_attempts
from kairos.executor.runners import AgentError, Runners
from kairos.executor.runs import FAILED, RunStore, parsed_trigger, run_name, value_to_python
from kairos.v1 import fire_pb2, run_pb2, trigger_pb2

log = structlog.get_logger(__name__)

DURABLE = "kairos-executor"
DEFAULT_ATTEMPT_DEADLINE_S = 300.0
WAIT_DELAY_S = 0.5
PULL_EXPIRES_S = 5.0
# The server holding a pull request sends an idle heartbeat this often while it has no fire for it; a request
# silent for PULL_SILENCE_S was lost with its server (a restart, a failover) and is asked again as soon as the
# connection is up, rather than once it would have expired.
PULL_HEARTBEAT_S = 1.0
PULL_SILENCE_S = 2.5
CANCEL_SUBJECT = "kairos.executor.cancel"
PAUSE_SUBJECT = "kairos.control.registry.pause_trigger"
Status = run_pb2.RunStatus
TRIGGER_TYPES = {
    run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE: "schedule",
    run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK: "webhook",
    run_pb2.TriggerType.TRIGGER_TYPE_EVENT: "event",
    run_pb2.TriggerType.TRIGGER_TYPE_MANUAL: "manual",
}
AGENT_VERSIONS = {trigger_pb2.AgentVersion.AGENT_VERSION_DRAFT: "draft"}
END_EVENTS = {
    Status.RUN_STATUS_COMPLETED: "run.completed",
    Status.RUN_STATUS_CANCELLED: "run.cancelled",
    Status.RUN_STATUS_SKIPPED: "run.skipped",
}


@dataclass(slots=True)
class RunningAttempt:
    """An attempt this process runs: the agent's task (CancelRun stops it), the fire's message (in-progress acks)
    and the lease token the attempt holds. `lost` is set when a renewal of that token was refused: another
    executor took the run over."""

    agent: asyncio.Task
    message: Msg
    lease_token: int
    lost: bool = False


@dataclass(frozen=True)
class WorkerSettings:
    """`concurrency` is the fires one executor process works on at once (attempts, waits and writes); it stays
    below the default workspace limit so one busy workspace is held back by the limit, not by re-offers. A
    fire spends most of its time waiting for its two group commits, so throughput follows it: 64 gave about
    700 runs/s with the no-op agent, 96 about 1,100 (bench_executor)."""

    ack_wait_s: float = 30.0
    workspace_max_concurrent_runs: int = 100
    concurrency: int = 96


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
        "payload": json.loads(fire.payload_json) if fire.payload_json else value_to_python(fire.payload),
    }
    if fire.webhook:
        document["webhook"] = fire.webhook
    if fire.event_type:
        document["event_type"] = fire.event_type
    return document


class FireWorker:
    """Pulls fires in batches and runs each in its own task, up to `concurrency` at once."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        store: RunStore,
        runners: Runners,
        callbacks: Callbacks | None = None,
        settings: WorkerSettings | None = None,
        triggers: KvMirror[trigger_pb2.Trigger] | None = None,
    ):
        self._nc = nc
        self._js = js
        self._store = store
        self._runners = runners
        self._callbacks = callbacks
        self._settings = settings or WorkerSettings()
        self._triggers = triggers
        self._concurrency = self._settings.concurrency
        self._slot_freed = asyncio.Event()
        self._pull_answered = asyncio.Event()
        self._pull_remaining = 0
        self._pull_status = ""
        self._pull_heard = 0.0  # loop time of the latest message (fire or status) for the pull request
        self._tasks: set[asyncio.Task] = set()
        self._running: dict[str, RunningAttempt] = {}  # run id -> its attempt running in this process
        self._heartbeats: asyncio.Task | None = None
        self._loop: asyncio.Task | None = None
        self._subscription = None
        self._cancel_subscription = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        config = api.ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self._settings.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=10_000,
            filter_subject=messaging.FIRES_SUBJECTS,
        )
        await self._js.add_consumer(messaging.FIRES_STREAM, config)
        self._cancel_subscription = await self._nc.subscribe(CANCEL_SUBJECT, cb=self._on_cancel)
        inbox = self._nc.new_inbox()
        self._subscription = await self._nc.subscribe(inbox, cb=self._on_pulled)
        self._loop = spawn(self._pull(inbox), "executor-pull")
        self._heartbeats = spawn(self._heartbeat(), "executor-heartbeat")

    async def stop(self, grace: float = 10.0) -> None:
        """Stops pulling, then gives in-flight runs `grace` seconds before they are left to redelivery."""
        self._stopping.set()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        for subscription in (self._subscription, self._cancel_subscription):
            if subscription is not None:
                # Drop the pull inbox now: fires still delivered to it are left to redelivery (never acked).
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats

    async def _pull(self, inbox: str) -> None:
        """Keeps one pull request for the free slots outstanding, so fires are pushed here as they arrive.
        nats-py's fetch() costs a probe, a status message and a new request per call, which at a steady few
        hundred fires per second made the executor spend several times the CPU of the runs themselves."""
        request_subject = f"$JS.API.CONSUMER.MSG.NEXT.{messaging.FIRES_STREAM}.{DURABLE}"
        refill = max(1, self._concurrency // 4)
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            free = self._concurrency - len(self._tasks)
            if free < refill:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._pull_answered.clear()
            self._pull_status = ""
            self._pull_remaining = free
            request = {
                "batch": free,
                "expires": int(PULL_EXPIRES_S * 1e9),
                "idle_heartbeat": int(PULL_HEARTBEAT_S * 1e9),
            }
            try:
                await self._nc.publish(request_subject, json.dumps(request).encode(), reply=inbox)
            except nats.errors.Error as error:
                log.warning("asking for fires failed; backing off", error=str(error))
                await asyncio.sleep(0.5)
                continue
            # Answered: the batch was delivered, or the request ended (expired, or the server dropped it).
            self._pull_heard = asked = loop.time()
            while not self._pull_answered.is_set():
                expires_at, silent_at = asked + PULL_EXPIRES_S + 1.0, self._pull_heard + PULL_SILENCE_S
                now = loop.time()
                if now < expires_at and now < silent_at:
                    until = min(expires_at, silent_at)
                elif self._nc.is_connected:
                    if now < expires_at:
                        log.info("the pull request for fires went silent; asking again")
                    break
                else:  # a request sent now would wait in nats-py's buffer beside others: ask once it is back
                    until = now + PULL_HEARTBEAT_S
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(until):
                        await self._pull_answered.wait()
            if self._pull_status == "409":  # e.g. a consumer leader change: do not spin on the refusal
                log.warning("the fire consumer refused a pull request; retrying", status=self._pull_status)
                await asyncio.sleep(0.5)

    async def _on_pulled(self, message: Msg) -> None:
        self._pull_heard = asyncio.get_running_loop().time()
        status = message.headers.get(api.Header.STATUS) if message.headers else None
        if status:
            if status != "100":  # not an idle heartbeat: 404/408 request ended, 409 server-side limits
                self._pull_status = status
                self._pull_answered.set()
            return
        task = spawn(self._handle(message), "executor-run")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        self._pull_remaining -= 1
        if self._pull_remaining <= 0:
            self._pull_answered.set()

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()

    # -- cancellation ------------------------------------------------------------------------------------

    async def cancel_run(self, name) -> RunRow:
        """CancelRun: a pending run is marked cancelled and never starts; a running one is marked cancelled
        and every executor is told to stop its attempt."""
        events: list[run_pb2.TraceEvent] = []

        def describe(row: RunRow) -> list[run_pb2.TraceEvent]:
            events.append(_event(row.fire_id, _trigger_of(row), "run.cancelled", row, error_message=row.status_reason))
            return events

        row, ended = await self._store.cancel(name, describe)
        if ended:
            await self._nc.publish(CANCEL_SUBJECT, row.id.encode())
        # A cancel has no fire (nor its snapshot) at hand: the notify_url is the one the trigger has now.
        record = self._trigger_record(row.workspace_id, row.trigger_id)
        await self._publish(events, record.policies.notify_url if record is not None else "")
        return row

    def _trigger_record(self, workspace: str, trigger_id: str) -> trigger_pb2.Trigger | None:
        """The trigger as the registry's change feed has it now, if this executor follows the feed and has it."""
        return None if self._triggers is None else self._triggers.cached(f"{workspace}.{trigger_id}")

    async def _on_cancel(self, message: Msg) -> None:
        attempt = self._running.get(message.data.decode())
        if attempt is not None:
            attempt.agent.cancel()

    # -- events ------------------------------------------------------------------------------------------

    async def _publish(self, events: list[run_pb2.TraceEvent], notify_url: str) -> None:
        """Queues the callbacks of stored lifecycle events durably (before the fire is acknowledged), then
        publishes the events on kairos.trace.<ws>.<trigger> (`Nats-Msg-Id` = the event id, so the event a
        redelivered fire repeats is stored, and counted by the registry, once)."""
        if self._callbacks is not None and notify_url and events:
            await self._callbacks.enqueue(notify_url, events)
        for event in events:
            trigger = parsed_trigger(event.trigger)
            with contextlib.suppress(Exception):
                await self._nc.publish(
                    messaging.trace_subject(trigger.workspace, trigger.trigger),
                    event.SerializeToString(),
                    headers={messaging.MSG_ID_HEADER: event.id},
                )

    # -- one fire ----------------------------------------------------------------------------------------

    async def _handle(self, message: Msg) -> None:
        try:
            fire = fire_pb2.FireRequest.FromString(message.data)
            parsed_trigger(fire.trigger)
        except Exception:
            log.error("discarding a fire that is not a valid FireRequest", subject=message.subject)
            await message.term()
            return
        structlog.contextvars.bind_contextvars(fire_id=fire.fire_id, trigger=fire.trigger)
        try:
            await self._execute(message, fire)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run failed to record; the fire will be redelivered")
            with contextlib.suppress(Exception):
                await message.nak(delay=1.0)
        finally:
            structlog.contextvars.clear_contextvars()

    def _admission_events(self, fire: fire_pb2.FireRequest, first_delivery: bool, admission) -> list:
        row = admission.row
        events = []
        if first_delivery and admission.outcome != "duplicate":
            events.append(_event(fire.fire_id, fire.trigger, "trigger.fired", row))
        for other in admission.cancelled:
            events.append(
                _event(other.fire_id, _trigger_of(other), "run.cancelled", other, error_message=other.status_reason)
            )
        if admission.outcome == "skipped":
            events.append(
                _event(
                    fire.fire_id,
                    fire.trigger,
                    "run.skipped",
                    row,
                    error_message=f"skipped: {row.status_reason}",
                    skip_reason=row.skip_reason,
                )
            )
        elif admission.outcome == "wait" and admission.created:
            events.append(_event(fire.fire_id, fire.trigger, "run.queued", row))
        elif admission.outcome == "run":
            events.append(_event(fire.fire_id, fire.trigger, "run.started", row))
        return events

    def _paused(self, fire: fire_pb2.FireRequest) -> bool:
        """Whether the trigger is paused in the registry's change feed; a manual fire (FireTrigger) still runs."""
        if fire.trigger_type == run_pb2.TriggerType.TRIGGER_TYPE_MANUAL:
            return False
        trigger = parsed_trigger(fire.trigger)
        record = self._trigger_record(trigger.workspace, trigger.trigger)
        return record is not None and record.state == trigger_pb2.TriggerState.TRIGGER_STATE_PAUSED

    async def _execute(self, message: Msg, fire: fire_pb2.FireRequest) -> None:
        first_delivery = message.metadata.num_delivered == 1
        inputs = run_input(fire)
        admission = await self._store.admit(
            fire,
            inputs,
            self._settings.workspace_max_concurrent_runs,
            lambda decided: self._admission_events(fire, first_delivery, decided),
            paused=self._paused(fire),
        )
        for other in admission.cancelled:
            await self._nc.publish(CANCEL_SUBJECT, other.id.encode())
        await self._publish(admission.events, fire.policies.notify_url)
        row = admission.row
        if admission.outcome == "duplicate":
            log.info("duplicate fire ignored")
            if self._callbacks is not None and fire.policies.notify_url:
                # The first delivery may have died between recording its events and queueing their callbacks;
                # queueing them again is harmless (same Nats-Msg-Id, and receivers dedupe on webhook-id).
                await self._callbacks.enqueue(fire.policies.notify_url, await self._store.events_of_fire(fire.fire_id))
            await message.ack()
            return
        if admission.outcome == "wait":
            await message.nak(delay=WAIT_DELAY_S)
            return
        if admission.outcome == "leased":
            remaining = (row.lease_expires_at - datetime.now(UTC)).total_seconds()
            log.info("run leased by another executor; asking again when the lease ends", remaining_s=remaining)
            await message.nak(delay=max(WAIT_DELAY_S, remaining))
            return
        if admission.outcome == "skipped":
            await message.ack()
            return
        ended = await self._attempt(message, fire, row, inputs)
        if ended:
            await message.ack()

    async def _attempt(self, message: Msg, fire: fire_pb2.FireRequest, row: RunRow, inputs: dict[str, Any]) -> bool:
        """Runs one attempt; returns whether the run ended (False: nak'ed for a retry)."""
        name = run_name(row)
        deadline = fire.policies.attempt_deadline.ToTimedelta().total_seconds() or DEFAULT_ATTEMPT_DEADLINE_S
        started = datetime.now(UTC)
        document = envelope(fire, name, row.attempt, inputs)
        # Awaited below (not a background task); its own task so CancelRun can stop just this attempt.
        agent = asyncio.create_task(self._runners.run(fire.action.runner, fire.action.agent, document, deadline))
        attempt = self._running[row.id] = RunningAttempt(agent, message, row.lease_token)
        status, output, error, retryable = Status.RUN_STATUS_COMPLETED, None, "", False
        try:
            output = await asyncio.shield(agent)
            json.dumps(output)
        except asyncio.CancelledError:
            if agent.cancelled() and not _being_cancelled():
                status, error = Status.RUN_STATUS_CANCELLED, "cancelled by request"
            else:
                agent.cancel()
                raise
        except TimeoutError:
            status, error, retryable = Status.RUN_STATUS_TIMED_OUT, f"no result within {deadline:g} s", True
        except AgentError as failure:
            status, error, retryable = Status.RUN_STATUS_FAILED, str(failure), failure.retryable
        except (TypeError, ValueError) as failure:
            status, error = Status.RUN_STATUS_FAILED, f"the agent's output is not JSON: {failure}"
        finally:
            if self._running.get(row.id) is attempt:
                del self._running[row.id]
        if attempt.lost:
            log.warning("another executor took this run over while its attempt ran; leaving it to that one", run=name)
            return False
        elapsed = int((datetime.now(UTC) - started).total_seconds() * 1000)
        events: list[run_pb2.TraceEvent] = []
        if status in FAILED and retryable and row.attempt < max_attempts(fire.policies):

            def describe_retry(stored: RunRow) -> list[run_pb2.TraceEvent]:
                fields = {"duration_ms": elapsed, "error_message": error}
                events.append(_event(fire.fire_id, fire.trigger, "run.retrying", stored, **fields))
                return events

            token = row.lease_token
            row = await self._store.retry_later(row, error, describe_retry)
            if row.lease_token != token:
                return self._fenced(name)
            await self._publish(events, fire.policies.notify_url)
            delay = backoff_s(fire.policies.retry, row.attempt)
            log.info("attempt failed; retrying", run=name, attempt=row.attempt, delay_s=round(delay, 3), error=error)
            await message.nak(delay=delay)
            return False

        def describe_end(stored: RunRow) -> list[run_pb2.TraceEvent]:
            kind = END_EVENTS.get(stored.status, "run.failed")
            fields = {"duration_ms": stored.duration_ms, "error_message": stored.error_message}
            events.append(_event(fire.fire_id, fire.trigger, kind, stored, **fields))
            return events

        token = row.lease_token
        if status == Status.RUN_STATUS_COMPLETED:
            row = await self._store.finish(row, status, output=output, describe=describe_end)
        else:
            reason = error if status == Status.RUN_STATUS_CANCELLED else ""
            row = await self._store.finish(row, status, error=error, reason=reason, describe=describe_end)
        if row.lease_token != token:
            return self._fenced(name)
        # No events when the run had already ended: whoever cancelled it recorded and published run.cancelled.
        # A failed fire is in the dead-letter stream before run.failed announces it.
        if events and row.status in FAILED:
            await self._dead_letter(message, fire, row)
        await self._publish(events, fire.policies.notify_url)
        if events and row.status in FAILED:
            await self._maybe_pause(fire, row)
        log.info("run ended", run=name, status=Status.Name(row.status), ms=elapsed)
        return True

    @staticmethod
    def _fenced(name: str) -> bool:
        """The attempt's result was refused: another executor holds the run now. Neither ack nor nak: the
        message belongs to that executor's delivery."""
        log.warning("the run's lease was taken over; this attempt's result is dropped", run=name)
        return False

    async def _heartbeat(self) -> None:
        """Each third of ack_wait: renews the lease of every running attempt, stops the attempts whose lease
        another executor took (this process was stalled), and sends in-progress acks for the others, so
        ack_wait only expires for a fire whose executor is gone or stalled.

        A refused renewal stops the attempt that held the refused token, never a later attempt of the same
        run: while the renewal was in flight, the attempt may have failed and the run's next attempt started
        here with a new token."""
        while True:
            await asyncio.sleep(self._settings.ack_wait_s / 3)
            renewing = list(self._running.items())
            if renewing:
                try:
                    lost = await self._store.renew_leases({run: attempt.lease_token for run, attempt in renewing})
                except Exception as error:
                    log.warning("renewing run leases failed", error=str(error))
                    lost = set()
                for run_id, attempt in renewing:
                    if run_id in lost:
                        attempt.lost = True
                        attempt.agent.cancel()
            for attempt in list(self._running.values()):
                if attempt.lost:
                    continue
                with contextlib.suppress(Exception):
                    await attempt.message.in_progress()

    async def _dead_letter(self, message: Msg, fire: fire_pb2.FireRequest, row: RunRow) -> None:
        trigger = parsed_trigger(fire.trigger)
        await self._js.publish(
            messaging.dead_letter_subject(trigger.workspace, trigger.trigger),
            message.data,
            stream=messaging.DEAD_LETTERS_STREAM,
            headers={
                messaging.MSG_ID_HEADER: fire.fire_id,
                "Kairos-Run": run_name(row),
                "Kairos-Attempts": str(row.attempt),
                "Kairos-Error": row.error_message[:500],
            },
        )

    async def _maybe_pause(self, fire: fire_pb2.FireRequest, row: RunRow) -> None:
        """Asks the registry to pause the trigger once `pause_after_failures` runs in a row failed."""
        threshold = fire.policies.pause_after_failures
        if threshold <= 0:
            return
        failures = await self._store.consecutive_failures(row.workspace_id, row.trigger_id, threshold)
        if failures < threshold:
            return
        note = f"paused by Kairos after {failures} consecutive failed runs; last error: {row.error_message[:300]}"
        request = {"trigger": fire.trigger, "note": note}
        try:
            reply = await self._nc.request(PAUSE_SUBJECT, json.dumps(request).encode(), timeout=5.0)
            answer = json.loads(reply.data)
        except Exception as error:
            log.warning("could not ask the registry to pause the trigger", error=str(error))
            return
        if answer.get("error"):
            log.warning("the registry did not pause the trigger", error=answer.get("message"))
        else:
            log.info("trigger paused after consecutive failures", failures=failures)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _trigger_of(row: RunRow) -> str:
    return f"workspaces/{row.workspace_id}/triggers/{row.trigger_id}"


def _event(fire_id: str, trigger: str, kind: str, row: RunRow | None, **fields: Any) -> run_pb2.TraceEvent:
    """A lifecycle event; its id (fire, type, attempt) is stable, so a redelivered fire repeats, not adds.
    `trigger.fired` precedes every attempt: attempt 0, no status."""
    fired = kind == "trigger.fired"
    attempt = row.attempt if row is not None and not fired else 0
    event = run_pb2.TraceEvent(
        id=f"{fire_id}/{kind}/{attempt}",
        type=kind,
        source="AUTOMATION",
        fire_id=fire_id,
        run=run_name(row) if row is not None else "",
        trigger=trigger,
        attempt=attempt,
        status=row.status if row is not None and not fired else Status.RUN_STATUS_UNSPECIFIED,
        **fields,
    )
    event.time.GetCurrentTime()
    return event
