"""Trigger counters (`TriggerInfo.fire_count`, `last_fire_time`, `skipped_fire_count`, `consecutive_failures`)
kept from the trace stream KAIROS_TRACE (`kairos.trace.<workspace>.<trigger>`).

A durable pull consumer shared by the registry replicas reads every trace event. Each fetched batch is counted
in one transaction that also records the stream sequence of each counted event, so an event JetStream
redelivers (the registry died after the commit, before its ack) never counts twice; the batch is acked after
the commit. `trigger.fired` counts a fire and sets the last fire time; `run.completed` resets and `run.failed`
increments the consecutive failures; `run.skipped` (executor: overlap, daily cap) and `trigger.skipped`
(scheduler: missed fires beyond catch-up) count skipped fires, `max(event.count, 1)` each since one scheduler
event may stand for many fires. Events of a trigger that no longer exists are dropped.

Within one registry the batches are applied in stream order (a failed batch is retried before the next fetch),
so `consecutive_failures` follows the runs' order; with several replicas two batches can be applied out of
order, which can only make that one counter briefly off until the next completed run resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass

import nats.errors
import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from kairos.core import messaging
from kairos.core.tasks import cancel_and_wait, spawn, wait_event
from kairos.registry.models import AppliedTraceEventRow, TriggerRow, TriggerStatsRow
from kairos.registry.transactions import Transactions
from kairos.v1 import run_pb2

log = structlog.get_logger(__name__)

DURABLE = "kairos-registry-stats"
BATCH = 256
FETCH_TIMEOUT_S = 1.0
RETRY_DELAY_S = 0.5
PRUNE_EVERY_BATCHES = 100
FIRED = "trigger.fired"
COMPLETED = "run.completed"
FAILED = "run.failed"
SKIPPED = ("run.skipped", "trigger.skipped")
COUNTED = (FIRED, COMPLETED, FAILED, *SKIPPED)


@dataclass
class CountedEvent:
    """A trace event worth counting, with where it sits in the stream."""

    sequence: int
    trigger_id: str
    event: run_pb2.TraceEvent


@dataclass
class _Change:
    """What one batch changes on one trigger's counters, in the order its events came."""

    fired: int = 0
    last_fire_ns: int | None = None
    skipped: int = 0
    reset: bool = False
    failures: int = 0

    def add(self, event: run_pb2.TraceEvent) -> None:
        if event.type == FIRED:
            self.fired += 1
            fired_at = event.time.ToNanoseconds()
            self.last_fire_ns = fired_at if self.last_fire_ns is None else max(self.last_fire_ns, fired_at)
        elif event.type == COMPLETED:
            self.reset, self.failures = True, 0
        elif event.type == FAILED:
            self.failures += 1
        else:
            self.skipped += max(event.count, 1)

    def apply(self, row: TriggerStatsRow) -> None:
        row.fire_count = (row.fire_count or 0) + self.fired
        row.skipped_fire_count = (row.skipped_fire_count or 0) + self.skipped
        row.consecutive_failures = self.failures if self.reset else (row.consecutive_failures or 0) + self.failures
        if self.last_fire_ns is not None:
            row.last_fire_time_ns = max(row.last_fire_time_ns or 0, self.last_fire_ns)


def counted_event(message: Msg) -> CountedEvent | None:
    """The event a trace message carries if it changes a counter, else None (other types, malformed)."""
    tokens = message.subject.split(".")
    if len(tokens) != 4:
        return None
    try:
        event = run_pb2.TraceEvent.FromString(message.data)
    except DecodeError:
        log.warning("undecodable trace event", subject=message.subject)
        return None
    if event.type not in COUNTED:
        return None
    return CountedEvent(message.metadata.sequence.stream, tokens[3], event)


def apply_events(session: Session, events: list[CountedEvent]) -> int:
    """Counts the events not counted before, in one transaction; returns how many were new."""
    sequences = [counted.sequence for counted in events]
    seen = set(
        session.scalars(select(AppliedTraceEventRow.sequence).where(AppliedTraceEventRow.sequence.in_(sequences))).all()
    )
    fresh = [counted for counted in events if counted.sequence not in seen]
    if not fresh:
        return 0
    session.execute(insert(AppliedTraceEventRow), [{"sequence": counted.sequence} for counted in fresh])
    changes: dict[str, _Change] = {}
    for counted in fresh:
        changes.setdefault(counted.trigger_id, _Change()).add(counted.event)
    existing = set(session.scalars(select(TriggerRow.id).where(TriggerRow.id.in_(changes))).all())
    rows = {
        row.trigger_id: row
        for row in session.scalars(
            select(TriggerStatsRow).where(TriggerStatsRow.trigger_id.in_(existing)).with_for_update()
        )
    }
    for trigger_id in existing:
        row = rows.get(trigger_id)
        if row is None:
            row = TriggerStatsRow(trigger_id=trigger_id)
            session.add(row)
        changes[trigger_id].apply(row)
    session.commit()
    return len(fresh)


def _prune(session: Session, ack_floor: int) -> None:
    session.execute(delete(AppliedTraceEventRow).where(AppliedTraceEventRow.sequence <= ack_floor))
    session.commit()


class TriggerStatsConsumer:
    """Reads KAIROS_TRACE and keeps `trigger_stats`. `wait_applied(sequence)` waits until every trace event up to
    that stream sequence this consumer received is counted."""

    def __init__(self, js: JetStreamContext, transactions: Transactions) -> None:
        self._js = js
        self._transactions = transactions
        self._stopping = asyncio.Event()
        self._progress = asyncio.Condition()
        self._applied_through = 0
        self._task: asyncio.Task | None = None
        self._subscription = None

    async def start(self) -> None:
        config = api.ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=30.0,
            max_deliver=-1,
            max_ack_pending=10_000,
            filter_subject=messaging.TRACE_SUBJECTS,
        )
        await self._js.add_consumer(messaging.TRACE_STREAM, config)
        self._subscription = await self._js.pull_subscribe_bind(durable=DURABLE, stream=messaging.TRACE_STREAM)
        self._task = spawn(self._run(), "registry-trigger-stats")

    async def stop(self) -> None:
        """Stops fetching; a batch not yet committed is left unacked and redelivered to the next consumer."""
        self._stopping.set()
        await cancel_and_wait(self._task)
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def wait_applied(self, sequence: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self._applied_through >= sequence)

    async def _pause(self) -> None:
        await wait_event(self._stopping, RETRY_DELAY_S)

    async def _run(self) -> None:
        batches = 0
        while not self._stopping.is_set():
            try:
                messages = await self._subscription.fetch(batch=BATCH, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                continue
            except nats.errors.Error as error:
                log.warning("fetching trace events failed; backing off", error=str(error))
                await self._pause()
                continue
            if not await self.count(messages):
                return
            batches += 1
            if batches % PRUNE_EVERY_BATCHES == 0:
                await self._prune()

    async def count(self, messages: list[Msg]) -> bool:
        """Counts and acks one batch, retrying its transaction until it commits; False if stopped first."""
        events = [counted for counted in map(counted_event, messages) if counted is not None]
        while events:
            try:
                await self._transactions.run(functools.partial(apply_events, events=events))
                break
            except SQLAlchemyError as error:
                log.warning("counting trace events failed; retrying", error=str(error))
                await self._pause()
                if self._stopping.is_set():
                    return False
        for message in messages:
            with contextlib.suppress(nats.errors.Error):
                await message.ack()
        if messages:
            async with self._progress:
                self._applied_through = max(self._applied_through, messages[-1].metadata.sequence.stream)
                self._progress.notify_all()
        return True

    async def _prune(self) -> None:
        try:
            info = await self._js.consumer_info(messaging.TRACE_STREAM, DURABLE)
            if info.ack_floor is not None and info.ack_floor.stream_seq > 0:
                await self._transactions.run(functools.partial(_prune, ack_floor=info.ack_floor.stream_seq))
        except (nats.errors.Error, SQLAlchemyError) as error:
            log.warning("pruning counted trace events failed", error=str(error))
