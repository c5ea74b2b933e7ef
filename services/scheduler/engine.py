"""The timer heap: the next fire time of every active schedule trigger in the shards this replica holds.

A fire's id is `<trigger>@<scheduled instant>`; it is the JetStream Msg-Id and unique on the run, so a
re-published fire (after a crash between publish and saving progress, or while two replicas briefly both
hold a shard) never runs twice. Progress (the last instant fired per trigger) is saved to the
`kairos_scheduler` KV bucket after JetStream acknowledged the fire, so a restarted scheduler neither repeats
fires nor forgets those that fell due while it was down: those are handled by the trigger's catch-up policy,
and every fire the policy does not run is counted in the progress and emitted as a `trigger.skipped` trace
event. Fires are published without waiting for each ack (up to 4,000 pending), and progress is written in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import time
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from kairos.core import messaging
from kairos.core.errors import KairosError
from kairos.core.names import parse_trigger
from kairos.core.schedule import Schedule, compile_schedule
from kairos.core.tasks import spawn
from kairos.scheduler.state import Progress, SchedulerState, iso
from kairos.v1 import fire_pb2, run_pb2, trigger_pb2

log = structlog.get_logger(__name__)

DEFAULT_CATCHUP_WINDOW = timedelta(hours=1)
DEFAULT_CATCHUP_MAX_FIRES = 100
NUM_SHARDS = 64
ACK_TIMEOUT_S = 10.0
RETRY_AFTER = timedelta(seconds=1)
PROGRESS_SUBJECT_PREFIX = f"$KV.{messaging.SCHEDULER_BUCKET}."
SKIPPED_EVENTS_PER_PLAN = 100
Mode = trigger_pb2.CatchupMode
ACTIVE = trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE
_ONE_MICROSECOND = timedelta(microseconds=1)


def fire_id(trigger_name: str, instant: datetime) -> str:
    return f"{trigger_name}@{iso(instant)}"


def shard_of(key: str, shards: int = NUM_SHARDS) -> int:
    """The shard of a trigger's feed key (`<workspace>.<trigger>`): a stable hash every replica agrees on."""
    return zlib.crc32(key.encode()) % shards


def catchup_fires(trigger: trigger_pb2.Trigger, missed: list[datetime], now: datetime) -> tuple[list[datetime], int]:
    """Which missed instants to fire under the trigger's catch-up policy, and how many are skipped."""
    policy = trigger.policies.catchup
    window = policy.window.ToTimedelta() if policy.HasField("window") else DEFAULT_CATCHUP_WINDOW
    recent = [instant for instant in missed if now - instant <= window]
    mode = policy.mode or Mode.CATCHUP_MODE_LATEST
    if mode == Mode.CATCHUP_MODE_NONE or not recent:
        chosen = []
    elif mode == Mode.CATCHUP_MODE_ALL:
        chosen = recent[-(policy.max_fires or DEFAULT_CATCHUP_MAX_FIRES) :]
    else:
        chosen = recent[-1:]
    return chosen, len(missed) - len(chosen)


@dataclass(slots=True)
class Tracked:
    """An active schedule trigger this replica knows of; planned (generation > 0) when its shard is held."""

    fire_template: bytes  # a FireRequest without the per-fire fields; appending them merges (protobuf)
    subject: str
    name: str
    shard: int
    schedule: Schedule
    changed_at: datetime
    next_fire: datetime | None = None
    generation: int = 0


class SchedulerEngine:
    """Knows every active schedule trigger, plans those of the shards it holds, and fires them on time."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, state: SchedulerState, replica_id: str) -> None:
        self._nc = nc
        self._js = js
        self._state = state
        self.replica_id = replica_id
        self._tracked: dict[str, Tracked] = {}
        self._shard_keys: list[set[str]] = [set() for _ in range(NUM_SHARDS)]
        self.held: set[int] = set()
        self._heap: list[tuple[datetime, int, str, int, datetime]] = []
        self._sequence = itertools.count()
        self._generations = itertools.count(1)
        self._compiled: dict[bytes, Schedule] = {}
        self._next_cache: dict[tuple[bytes, int], datetime | None] = {}
        self._wakeup = asyncio.Event()
        self._pending: set[asyncio.Future] = set()
        self._dirty: dict[str, Progress] = {}
        self._local_progress: dict[str, Progress] = {}
        self._dirty_event = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        # nats-py can swallow a cancellation (its flush path catches CancelledError, publish_async turns it into
        # TooManyStalledMsgsError), so every loop also ends on this event instead of relying on cancel alone.
        self._stopping = asyncio.Event()
        self.fires_published = 0
        self.skipped_fires = 0
        self._lags_ms: deque[float] = deque(maxlen=2000)

    # ------------------------------------------------------------------------------------ reporting

    @property
    def scheduled_triggers(self) -> int:
        return sum(len(self._shard_keys[shard]) for shard in self.held)

    def lag_percentiles(self) -> tuple[float, float]:
        if not self._lags_ms:
            return 0.0, 0.0
        ordered = sorted(self._lags_ms)
        return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._tasks = [
            spawn(self._fire_loop(), "scheduler-timer"),
            spawn(self._write_progress(), "scheduler-progress"),
        ]

    async def stop(self, grace: float = 5.0) -> None:
        """Stops timing fires, lets the fires in flight get their ack (up to `grace` s), saves progress."""
        log.info("scheduler engine stopping", in_flight=len(self._pending), unsaved=len(self._dirty))
        self._stopping.set()
        self._wakeup.set()
        self._dirty_event.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=grace)
        await self._flush_progress()
        log.info("scheduler engine stopped")

    # ------------------------------------------------------------------------------------ the change feed

    def on_trigger(self, key: str, data: bytes | None, revision: int = 0) -> None:
        """Change-feed callback for `kairos_triggers`: tracks active schedule triggers, re-plans held ones."""
        previous = self._tracked.pop(key, None)
        if previous is not None:
            self._shard_keys[previous.shard].discard(key)
        tracked = self._track(key, data) if data else None
        if tracked is None:
            self._local_progress.pop(key, None)
            return
        self._tracked[key] = tracked
        self._shard_keys[tracked.shard].add(key)
        if tracked.shard in self.held:
            self._plan(key, tracked, datetime.now(UTC), late_since=None)

    def _track(self, key: str, data: bytes) -> Tracked | None:
        trigger = trigger_pb2.Trigger.FromString(data)
        if trigger.state != ACTIVE or not trigger.source.HasField("schedule"):
            return None
        try:
            schedule = self._compile(trigger)
        except KairosError as error:
            log.error("trigger has an invalid schedule; not scheduling it", key=key, error=str(error))
            return None
        changed_at = trigger.update_time.ToDatetime(UTC) - _ONE_MICROSECOND
        name = parse_trigger(trigger.name, "trigger")
        template = fire_pb2.FireRequest(
            trigger=trigger.name,
            trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE,
            action=trigger.action,
            policies=trigger.policies,
            timezone=schedule.timezone,
            trigger_revision=trigger.revision,
        )
        subject = messaging.fire_subject(name.workspace, name.trigger)
        return Tracked(template.SerializeToString(), subject, trigger.name, shard_of(key), schedule, changed_at)

    def _compile(self, trigger: trigger_pb2.Trigger) -> Schedule:
        """Compiles a schedule; identical cron and one-shot sources share one compiled Schedule."""
        source = trigger.source.schedule
        anchor = trigger.create_time.ToDatetime(UTC)
        if source.WhichOneof("spec") == "interval":
            return compile_schedule(source, anchor=anchor)
        serialized = source.SerializeToString(deterministic=True)
        schedule = self._compiled.get(serialized)
        if schedule is None:
            schedule = self._compiled[serialized] = compile_schedule(source, anchor=anchor)
        return schedule

    def _next_after(self, schedule: Schedule, after: datetime) -> datetime | None:
        """`schedule.next_fire_after`, memoised for cron (whose answer depends only on the second)."""
        if schedule.kind != "cron":
            return schedule.next_fire_after(after)
        second = int(after.timestamp() // 1)
        cache_key = (schedule.serialized_source, second)
        try:
            return self._next_cache[cache_key]
        except KeyError:
            pass
        if len(self._next_cache) > 100_000:
            self._next_cache.clear()
        found = self._next_cache[cache_key] = schedule.next_fire_after(after)
        return found

    # ------------------------------------------------------------------------------------ shards

    def acquire(self, shard: int, late_since: datetime | None) -> None:
        """Starts firing the triggers of `shard`, from each trigger's progress.

        Fires after `late_since` (set when the shard is taken over from a replica that was running) are late,
        not missed: all of them fire. Older missed fires follow the trigger's catch-up policy.
        """
        self.held.add(shard)
        now = datetime.now(UTC)
        for key in list(self._shard_keys[shard]):
            self._plan(key, self._tracked[key], now, late_since)
        log.info("shard acquired", shard=shard, triggers=len(self._shard_keys[shard]))

    def release(self, shard: int) -> None:
        """Stops firing the triggers of `shard` (a fire already in flight still completes)."""
        self.held.discard(shard)
        for key in self._shard_keys[shard]:
            self._tracked[key].generation = 0
            self._local_progress.pop(key, None)
        log.info("shard released", shard=shard)

    # ------------------------------------------------------------------------------------ planning

    def progress(self, key: str) -> Progress:
        local = self._local_progress.get(key)
        return local if local is not None else self._state.progress(key)

    def _plan(self, key: str, tracked: Tracked, now: datetime, late_since: datetime | None) -> None:
        progress = self.progress(key)
        since = tracked.changed_at
        if progress.last_fired is not None and progress.last_fired > since:
            since = progress.last_fired
        missed: list[datetime] = []
        if since < now:
            instant = self._next_after(tracked.schedule, since)
            while instant is not None and instant <= now:
                missed.append(instant)
                instant = self._next_after(tracked.schedule, instant)
        due: list[datetime] = []
        if missed:
            late = [instant for instant in missed if late_since is not None and instant > late_since]
            earlier = missed[: len(missed) - len(late)]
            policies = fire_pb2.FireRequest.FromString(tracked.fire_template).policies
            chosen, skipped = catchup_fires(trigger_pb2.Trigger(policies=policies), earlier, now)
            due = chosen + late
            if skipped:
                self._skip(key, tracked, [instant for instant in earlier if instant not in chosen], progress)
        tracked.generation = next(self._generations)
        tracked.next_fire = self._next_after(tracked.schedule, max(now, since))
        for instant in due:
            self._push(key, tracked, instant)
        if tracked.next_fire is not None:
            self._push(key, tracked, tracked.next_fire)

    def _push(self, key: str, tracked: Tracked, instant: datetime) -> None:
        publish_at = instant
        if tracked.schedule.jitter:
            publish_at = instant + tracked.schedule.jitter_for(instant, tracked.name)
        heapq.heappush(self._heap, (publish_at, next(self._sequence), key, tracked.generation, instant))
        if self._heap[0][0] == publish_at:
            self._wakeup.set()

    def _skip(self, key: str, tracked: Tracked, skipped: list[datetime], progress: Progress) -> None:
        """Counts missed fires the catch-up policy does not run and emits one trace event per instant."""
        self.skipped_fires += len(skipped)
        counted = Progress(progress.last_fired, progress.skipped + len(skipped))
        self._save(key, counted)
        log.info("missed fires skipped by the catch-up policy", key=key, skipped=len(skipped))
        name = parse_trigger(tracked.name, "trigger")
        subject = messaging.trace_subject(name.workspace, name.trigger)
        reason = f"missed while no scheduler ran it; {len(skipped)} missed fire(s) skipped by the catch-up policy"
        for instant in skipped[-SKIPPED_EVENTS_PER_PLAN:]:
            event = run_pb2.TraceEvent(
                id=f"{fire_id(tracked.name, instant)}/trigger.skipped",
                type="trigger.skipped",
                source="AUTOMATION",
                fire_id=fire_id(tracked.name, instant),
                trigger=tracked.name,
                status=run_pb2.RunStatus.RUN_STATUS_SKIPPED,
                error_message=reason,
            )
            event.time.GetCurrentTime()
            spawn(self._publish_trace(subject, event.SerializeToString()), "scheduler-trace")

    async def _publish_trace(self, subject: str, payload: bytes) -> None:
        try:
            await self._nc.publish(subject, payload)
        except Exception as error:
            log.warning("cannot publish a trace event", subject=subject, error=str(error))

    # ------------------------------------------------------------------------------------ firing

    async def _fire_loop(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            now = datetime.now(UTC)
            popped = 0
            while self._heap and self._heap[0][0] <= now:
                publish_at, _, key, generation, instant = heapq.heappop(self._heap)
                tracked = self._tracked.get(key)
                if tracked is None or tracked.generation != generation:
                    continue
                if instant == tracked.next_fire:
                    tracked.next_fire = self._next_after(tracked.schedule, instant)
                    if tracked.next_fire is not None:
                        self._push(key, tracked, tracked.next_fire)
                await self._publish(key, tracked, instant, publish_at)
                popped += 1
                if popped % 512 == 0:
                    await asyncio.sleep(0)
            delay = (self._heap[0][0] - datetime.now(UTC)).total_seconds() if self._heap else 60.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)

    def _still_mine(self, key: str, generation: int) -> bool:
        tracked = self._tracked.get(key)
        return tracked is not None and tracked.generation == generation

    async def _publish(self, key: str, tracked: Tracked, instant: datetime, publish_at: datetime) -> None:
        """Publishes one fire without waiting for its ack (JetStream's async publish; at most 4,000 pending).

        The ack arrives in `_acknowledged`; a fire not acknowledged within `ACK_TIMEOUT_S` is retried a second
        later through the heap, as long as this replica still plans the trigger.
        """
        fire = fire_pb2.FireRequest(fire_id=fire_id(tracked.name, instant))
        fire.scheduled_time.FromDatetime(instant)
        fire.fire_time.FromNanoseconds(time.time_ns())
        retry = (key, tracked.generation, instant)
        try:
            future = await self._js.publish_async(
                tracked.subject,
                tracked.fire_template + fire.SerializeToString(),
                stream=messaging.FIRES_STREAM,
                headers={messaging.MSG_ID_HEADER: fire.fire_id},
            )
        except Exception as error:
            log.warning("cannot publish a fire; retrying", fire_id=fire.fire_id, error=str(error))
            self._retry(*retry)
            return
        timer = asyncio.get_running_loop().call_later(ACK_TIMEOUT_S, future.cancel)
        self._pending.add(future)
        future.add_done_callback(
            functools.partial(self._acknowledged, key, tracked, retry, publish_at, fire.fire_id, timer)
        )

    def _acknowledged(
        self,
        key: str,
        tracked: Tracked,
        retry: tuple[str, int, datetime],
        publish_at: datetime,
        fire: str,
        timer: asyncio.TimerHandle,
        future: asyncio.Future,
    ) -> None:
        timer.cancel()
        self._pending.discard(future)
        if future.cancelled() or future.exception() is not None:
            error = "no ack in time" if future.cancelled() else str(future.exception())
            log.warning("fire not acknowledged; retrying", fire_id=fire, error=error)
            self._retry(*retry)
            return
        if future.result().duplicate:
            log.info("fire was already published", fire_id=fire)
        self._lags_ms.append((datetime.now(UTC) - publish_at).total_seconds() * 1000)
        self.fires_published += 1
        instant = retry[2]
        if key in self._tracked and tracked.shard in self.held:
            progress = self.progress(key)
            if progress.last_fired is None or instant > progress.last_fired:
                self._save(key, Progress(instant, progress.skipped))

    def _retry(self, key: str, generation: int, instant: datetime) -> None:
        if self._still_mine(key, generation):
            retry_at = datetime.now(UTC) + RETRY_AFTER
            heapq.heappush(self._heap, (retry_at, next(self._sequence), key, generation, instant))
            self._wakeup.set()

    # ------------------------------------------------------------------------------------ progress

    def _save(self, key: str, progress: Progress) -> None:
        self._local_progress[key] = progress
        self._dirty[key] = progress
        self._dirty_event.set()

    async def _write_progress(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty_event.wait(), timeout=1.0)
            self._dirty_event.clear()
            await self._flush_progress()

    async def _flush_progress(self) -> None:
        """Writes the changed progress with pipelined publishes; failed writes are retried on the next round."""
        batch, self._dirty = self._dirty, {}
        writes: list[tuple[str, Progress, asyncio.Future]] = []
        for key, progress in batch.items():
            try:
                future = await self._js.publish_async(f"{PROGRESS_SUBJECT_PREFIX}{key}", progress.encode())
            except Exception as error:
                log.warning("cannot save progress; will retry", key=key, error=str(error))
                self._dirty.setdefault(key, progress)
                continue
            writes.append((key, progress, future))
        if not writes:
            return
        await asyncio.wait([future for _, _, future in writes], timeout=ACK_TIMEOUT_S)
        for key, progress, future in writes:
            if not future.done() or future.cancelled() or future.exception() is not None:
                future.cancel()
                self._dirty.setdefault(key, progress)
