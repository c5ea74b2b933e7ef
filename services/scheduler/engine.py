"""The timer heap: the next fire time of every active schedule trigger in the shards this replica holds.

A fire's id is `<trigger>@<scheduled instant>`; it is the JetStream Msg-Id and unique on the run, so a
re-published fire (after a crash between publish and saving progress, or while two replicas briefly both
hold a shard) never runs twice. Progress (the last instant fired per trigger) is saved to the
`kairos_scheduler` KV bucket after JetStream acknowledged the fire, so a restarted scheduler neither repeats
fires nor forgets those that fell due while it was down: those are handled by the trigger's catch-up policy,
and every fire the policy does not run is counted in the progress and emitted as a `trigger.skipped` trace
event.

Speed: time is kept in integer Unix microseconds; fires go out through the shared `JetStreamPublisher`
(up to 4,000 awaiting their ack, each attempt with a deadline, re-sent with the same Msg-Id); progress is one
document per shard, written at most once a second; the timer wakes shortly before a fire is due and yields
in a tight loop for the last `SPIN_US`, since the event loop's timers are only millisecond-accurate.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from nats.aio.client import Client as NatsClient

from kairos.core import messaging
from kairos.core.errors import KairosError
from kairos.core.jetstream import JetStreamPublisher
from kairos.core.names import parse_trigger
from kairos.core.schedule import Schedule, compile_schedule, from_micros, to_micros
from kairos.core.tasks import cancel_and_wait, spawn, wait_event
from kairos.scheduler.state import (
    NUM_SHARDS,
    ProgressEntry,
    SchedulerState,
    encode_shard_progress,
    iso,
    progress_key,
    shard_of,
)
from kairos.v1 import fire_pb2, run_pb2, trigger_pb2

__all__ = ["NUM_SHARDS", "SchedulerEngine", "catchup_fires", "fire_id", "shard_of"]

log = structlog.get_logger(__name__)

DEFAULT_CATCHUP_WINDOW = timedelta(hours=1)
DEFAULT_CATCHUP_MAX_FIRES = 100
ACK_TIMEOUT_S = 5.0  # per attempt; a fire is sent twice (same Msg-Id) before it is re-planned
PUBLISH_ATTEMPTS = 2
MAX_IN_FLIGHT = 4000
RETRY_AFTER_US = 1_000_000
PROGRESS_EVERY_S = 1.0
SPIN_US = 1_000
SKIPPED_EVENTS_PER_PLAN = 100
Mode = trigger_pb2.CatchupMode
ACTIVE = trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE
_SCHEDULE_TRIGGER = run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE
_PROGRESS_SUBJECT_PREFIX = f"$KV.{messaging.SCHEDULER_BUCKET}."


def now_us() -> int:
    return time.time_ns() // 1000


def fire_id(trigger_name: str, instant: datetime) -> str:
    return f"{trigger_name}@{iso(instant)}"


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
    changed_at: int  # Unix microseconds
    next_fire: int | None = None
    generation: int = 0


class NextFireCache:
    """`schedule.next_fire_after_us`, memoised for cron, whose computation is the costly one.

    Per cron source it keeps one stretch: having found that `found` is the first fire after `since`, it is also
    the first fire after any instant in [since, found). Triggers sharing a schedule (thousands do) and the
    instants they are planned from mostly fall in the same stretch, so 100,000 triggers cost one computation
    per distinct schedule.
    """

    def __init__(self) -> None:
        self._stretches: dict[bytes, tuple[int, int | None]] = {}

    def next_after(self, schedule: Schedule, after: int) -> int | None:
        if schedule.kind != "cron":
            return schedule.next_fire_after_us(after)
        source = schedule.serialized_source
        stretch = self._stretches.get(source)
        if stretch is not None:
            since, found = stretch
            if since <= after and (found is None or after < found):
                return found
        found = schedule.next_fire_after_us(after)
        if stretch is None or found is None or stretch[1] is None or found >= stretch[1]:
            self._stretches[source] = (after, found)  # a later stretch, or the same one reaching further back
        return found


class SchedulerEngine:
    """Knows every active schedule trigger, plans those of the shards it holds, and fires them on time."""

    def __init__(self, nc: NatsClient, state: SchedulerState, replica_id: str) -> None:
        self._nc = nc
        self._state = state
        self.replica_id = replica_id
        self._publisher = JetStreamPublisher(
            nc, max_in_flight=MAX_IN_FLIGHT, timeout=ACK_TIMEOUT_S, attempts=PUBLISH_ATTEMPTS
        )
        self._tracked: dict[str, Tracked] = {}
        self._shard_keys: list[set[str]] = [set() for _ in range(NUM_SHARDS)]
        self.held: set[int] = set()
        # (publish at, tie-breaker, key, generation, scheduled instant), instants in Unix microseconds
        self._heap: list[tuple[int, int, str, int, int]] = []
        self._sequence = itertools.count()
        self._generations = itertools.count(1)
        self._compiled: dict[bytes, Schedule] = {}
        self._next_fires = NextFireCache()
        self._instant_texts: dict[int, str] = {}
        self._wakeup = asyncio.Event()
        self._pending: set[asyncio.Future] = set()
        # Progress of the held shards' triggers, by shard; released shards wait in `_unsaved` for their write.
        self._progress: dict[int, dict[str, ProgressEntry]] = {}
        self._unsaved: dict[int, dict[str, ProgressEntry]] = {}
        self._dirty: set[int] = set()
        self._tasks: list[asyncio.Task] = []
        # nats-py can swallow a cancellation (its flush path catches CancelledError), so every loop also ends on
        # this event instead of relying on cancel alone.
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
        await self._publisher.start()
        self._tasks = [
            spawn(self._fire_loop(), "scheduler-timer"),
            spawn(self._write_progress(), "scheduler-progress"),
        ]

    async def drain(self, grace: float = 5.0) -> None:
        """Stops timing fires, lets the fires in flight get their ack (up to `grace` s) and saves progress; called
        while this replica still holds its shards, so the acks that arrive meanwhile are saved too."""
        if self._stopping.is_set():
            return
        log.info("scheduler engine draining", in_flight=len(self._pending), unsaved=len(self._dirty))
        self._stopping.set()
        self._wakeup.set()
        await cancel_and_wait(*self._tasks)
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=grace)
        await self._flush_progress()

    async def stop(self, grace: float = 5.0) -> None:
        """Drains if not done yet, saves what changed since (shards released meanwhile), closes the publisher."""
        await self.drain(grace)
        await self._flush_progress()
        await self._publisher.close()
        log.info("scheduler engine stopped")

    # ------------------------------------------------------------------------------------ the change feed

    def on_trigger(self, key: str, data: bytes | None, revision: int = 0) -> None:
        """Change-feed callback for `kairos_triggers`: tracks active schedule triggers, re-plans held ones."""
        previous = self._tracked.pop(key, None)
        if previous is not None:
            self._shard_keys[previous.shard].discard(key)
        tracked = self._track(key, data) if data else None
        if tracked is None:
            shard = shard_of(key)
            if data is None and self._forget_progress(shard, key):  # deleted; a paused trigger keeps its count
                self._dirty.add(shard)
            return
        self._tracked[key] = tracked
        self._shard_keys[tracked.shard].add(key)
        if tracked.shard in self.held:
            self._plan(key, tracked, now_us(), late_since=None)

    def _forget_progress(self, shard: int, key: str) -> bool:
        """Drops a deleted trigger from its shard's progress (when this replica holds it); True if it was there."""
        triggers = self._progress.get(shard)
        return triggers is not None and triggers.pop(key, None) is not None

    def _track(self, key: str, data: bytes) -> Tracked | None:
        trigger = trigger_pb2.Trigger.FromString(data)
        if trigger.state != ACTIVE or not trigger.source.HasField("schedule"):
            return None
        try:
            schedule = self._compile(trigger)
        except KairosError as error:
            log.error("trigger has an invalid schedule; not scheduling it", key=key, error=str(error))
            return None
        template = fire_pb2.FireRequest(
            trigger=trigger.name,
            trigger_type=_SCHEDULE_TRIGGER,
            action=trigger.action,
            policies=trigger.policies,
            timezone=schedule.timezone,
            trigger_revision=trigger.revision,
        )
        # The feed key is `<workspace>.<trigger>`, ids the registry checked: the fire subject's last two tokens.
        subject = f"{messaging.FIRE_SUBJECT_PREFIX}.{key}"
        changed_at = trigger.update_time.ToMicroseconds() - 1
        return Tracked(template.SerializeToString(), subject, trigger.name, shard_of(key), schedule, changed_at)

    def _compile(self, trigger: trigger_pb2.Trigger) -> Schedule:
        """Compiles a schedule; identical cron and one-shot sources share one compiled Schedule."""
        source = trigger.source.schedule
        if source.WhichOneof("spec") == "interval":
            return compile_schedule(source, anchor=trigger.create_time.ToDatetime(UTC))
        serialized = source.SerializeToString(deterministic=True)
        schedule = self._compiled.get(serialized)
        if schedule is None:
            anchor = trigger.create_time.ToDatetime(UTC)
            schedule = self._compiled[serialized] = compile_schedule(source, anchor=anchor)
        return schedule

    def _next_after(self, schedule: Schedule, after: int) -> int | None:
        return self._next_fires.next_after(schedule, after)

    # ------------------------------------------------------------------------------------ shards

    def acquire(self, shard: int, late_since: datetime | None) -> None:
        """Starts firing the triggers of `shard`, from each trigger's progress.

        Fires after `late_since` (set when the shard is taken over from a replica that was running) are late,
        not missed: all of them fire. Older missed fires follow the trigger's catch-up policy.
        """
        self.held.add(shard)
        keys = self._shard_keys[shard]
        unsaved = self._unsaved.pop(shard, None)
        self._progress[shard] = unsaved if unsaved is not None else self._state.shard_progress(shard, keys)
        if unsaved is not None:
            self._dirty.add(shard)
        now = now_us()
        late = None if late_since is None else to_micros(late_since)
        for key in list(keys):
            self._plan(key, self._tracked[key], now, late)
        log.info("shard acquired", shard=shard, triggers=len(keys))

    def release(self, shard: int) -> None:
        """Stops firing the triggers of `shard` (a fire already in flight still completes)."""
        self.held.discard(shard)
        for key in self._shard_keys[shard]:
            self._tracked[key].generation = 0
        triggers = self._progress.pop(shard, None)
        if triggers is not None and shard in self._dirty:
            self._unsaved[shard] = triggers
        log.info("shard released", shard=shard)

    # ------------------------------------------------------------------------------------ planning

    def _plan(self, key: str, tracked: Tracked, now: int, late_since: int | None) -> None:
        entry = self._progress[tracked.shard].get(key)
        last_fired = entry[0] if entry is not None else None
        since = tracked.changed_at
        if last_fired is not None and last_fired > since:
            since = last_fired
        missed: list[int] = []
        if since < now:
            instant = self._next_after(tracked.schedule, since)
            while instant is not None and instant <= now:
                missed.append(instant)
                instant = self._next_after(tracked.schedule, instant)
        due: list[int] = []
        if missed:
            late = [instant for instant in missed if late_since is not None and instant > late_since]
            earlier = missed[: len(missed) - len(late)]
            policies = fire_pb2.FireRequest.FromString(tracked.fire_template).policies
            chosen_times, skipped = catchup_fires(
                trigger_pb2.Trigger(policies=policies), [from_micros(us) for us in earlier], from_micros(now)
            )
            chosen = [to_micros(instant) for instant in chosen_times]
            due = chosen + late
            if skipped:  # the chosen instants are the newest of `earlier`
                self._skip(key, tracked, earlier[:skipped])
        tracked.generation = next(self._generations)
        tracked.next_fire = self._next_after(tracked.schedule, max(now, since))
        for instant in due:
            self._push(key, tracked, instant)
        if tracked.next_fire is not None:
            self._push(key, tracked, tracked.next_fire)

    def _push(self, key: str, tracked: Tracked, instant: int) -> None:
        publish_at = instant
        if tracked.schedule.jitter:
            publish_at = instant + tracked.schedule.jitter_us(instant, tracked.name)
        heapq.heappush(self._heap, (publish_at, next(self._sequence), key, tracked.generation, instant))
        if self._heap[0][0] == publish_at:
            self._wakeup.set()

    def _skip(self, key: str, tracked: Tracked, skipped: list[int]) -> None:
        """Counts missed fires the catch-up policy does not run and emits a trace event per instant (at most
        SKIPPED_EVENTS_PER_PLAN; `count` carries the rest)."""
        self.skipped_fires += len(skipped)
        triggers = self._progress[tracked.shard]
        last_fired, count = triggers.get(key) or (None, 0)
        triggers[key] = [last_fired, count + len(skipped)]
        self._dirty.add(tracked.shard)
        log.info("missed fires skipped by the catch-up policy", key=key, skipped=len(skipped))
        name = parse_trigger(tracked.name, "trigger")
        subject = messaging.trace_subject(name.workspace, name.trigger)
        reason = f"missed while no scheduler ran it; {len(skipped)} missed fire(s) skipped by the catch-up policy"
        emitted = skipped[-SKIPPED_EVENTS_PER_PLAN:]
        # The first event emitted also stands for the older instants not emitted one by one.
        counts = [len(skipped) - len(emitted) + 1] + [1] * (len(emitted) - 1)
        for instant, count in zip(emitted, counts, strict=True):
            skipped_fire = self._fire_id(tracked.name, instant)
            event = run_pb2.TraceEvent(
                id=f"{skipped_fire}/trigger.skipped",
                type="trigger.skipped",
                source="AUTOMATION",
                fire_id=skipped_fire,
                trigger=tracked.name,
                status=run_pb2.RunStatus.RUN_STATUS_SKIPPED,
                error_message=reason,
                count=count,
            )
            event.time.GetCurrentTime()
            spawn(self._publish_trace(subject, event), "scheduler-trace")

    async def _publish_trace(self, subject: str, event: run_pb2.TraceEvent) -> None:
        """Publishes with `Nats-Msg-Id` = the event id, so a plan repeated after a restart is not counted twice."""
        try:
            await self._nc.publish(subject, event.SerializeToString(), headers={messaging.MSG_ID_HEADER: event.id})
        except Exception as error:
            log.warning("cannot publish a trace event", subject=subject, error=str(error))

    # ------------------------------------------------------------------------------------ firing

    async def _fire_loop(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while not self._stopping.is_set():
            self._wakeup.clear()
            now = now_us()
            popped = 0
            while heap and heap[0][0] <= now:
                publish_at, _, key, generation, instant = heapq.heappop(heap)
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
                    now = now_us()
            if popped:
                await asyncio.sleep(0)  # let the connection's flusher send what was just published
                continue
            delay = heap[0][0] - now_us() if heap else 60_000_000
            if delay > SPIN_US:
                timer = loop.call_later((delay - SPIN_US) / 1e6, self._wakeup.set)
                await self._wakeup.wait()
                timer.cancel()
            elif delay > 0:
                await asyncio.sleep(0)  # the last moments before a fire: yield, but do not sleep past it

    async def _publish(self, key: str, tracked: Tracked, instant: int, publish_at: int) -> None:
        """Publishes one fire without waiting for its ack; waits only while `MAX_IN_FLIGHT` await theirs.

        The ack arrives in `_acknowledged`; a fire JetStream does not acknowledge (after `PUBLISH_ATTEMPTS`
        attempts of `ACK_TIMEOUT_S`) is re-planned a second later, as long as this replica still plans it.
        """
        fire = fire_pb2.FireRequest(fire_id=self._fire_id(tracked.name, instant))
        seconds, micros = divmod(instant, 1_000_000)
        fire.scheduled_time.seconds = seconds
        fire.scheduled_time.nanos = micros * 1000
        fired_ns = time.time_ns()
        fire.fire_time.seconds, fire.fire_time.nanos = divmod(fired_ns, 1_000_000_000)
        try:
            future = await self._publisher.submit(
                tracked.subject,
                tracked.fire_template + fire.SerializeToString(),
                msg_id=fire.fire_id,
                stream=messaging.FIRES_STREAM,
            )
        except Exception as error:
            log.warning("cannot publish a fire; retrying", fire_id=fire.fire_id, error=str(error))
            self._retry(key, tracked.generation, instant)
            return
        self._pending.add(future)
        future.add_done_callback(
            functools.partial(self._acknowledged, key, tracked, tracked.generation, instant, publish_at)
        )

    def _fire_id(self, trigger_name: str, instant: int) -> str:
        """`fire_id` for an instant in Unix microseconds, its text memoised."""
        return f"{trigger_name}@{self._instant_text(instant)}"

    def _instant_text(self, instant: int) -> str:
        """The ISO text of a fire instant, memoised: many triggers fire at the same instants."""
        text = self._instant_texts.get(instant)
        if text is None:
            if len(self._instant_texts) > 10_000:
                self._instant_texts.clear()
            text = self._instant_texts[instant] = iso(from_micros(instant))
        return text

    def _acknowledged(
        self, key: str, tracked: Tracked, generation: int, instant: int, publish_at: int, future: asyncio.Future
    ) -> None:
        self._pending.discard(future)
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            log.warning(
                "fire not acknowledged; retrying", fire_id=self._fire_id(tracked.name, instant), error=str(error)
            )
            self._retry(key, generation, instant)
            return
        if future.result().duplicate:
            log.info("fire was already published", fire_id=self._fire_id(tracked.name, instant))
        self._lags_ms.append((now_us() - publish_at) / 1000)
        self.fires_published += 1
        triggers = self._progress.get(tracked.shard)
        if triggers is None or key not in self._tracked:
            return
        entry = triggers.get(key)
        if entry is None:
            triggers[key] = [instant, 0]
        elif entry[0] is None or instant > entry[0]:
            entry[0] = instant
        else:
            return
        self._dirty.add(tracked.shard)

    def _retry(self, key: str, generation: int, instant: int) -> None:
        tracked = self._tracked.get(key)
        if tracked is not None and tracked.generation == generation:
            heapq.heappush(self._heap, (now_us() + RETRY_AFTER_US, next(self._sequence), key, generation, instant))
            self._wakeup.set()

    # ------------------------------------------------------------------------------------ progress

    async def _write_progress(self) -> None:
        while not self._stopping.is_set():
            await wait_event(self._stopping, PROGRESS_EVERY_S)
            await self._flush_progress(spread_s=PROGRESS_EVERY_S / 2)

    async def _flush_progress(self, spread_s: float = 0.0) -> None:
        """Writes the progress document of every shard that changed; a failed write is retried next round.

        With `spread_s` the writes are spaced over that many seconds (until a stop is asked for): a round of up to
        64 documents of ~80 KB at once held both this loop and the nats-server long enough to delay due fires.
        """
        dirty, self._dirty = self._dirty, set()
        unsaved, self._unsaved = self._unsaved, {}
        shards = dirty | set(unsaved)
        pause_s = spread_s / len(shards) if shards else 0.0
        writes: list[tuple[int, dict[str, ProgressEntry], asyncio.Future]] = []
        for shard in shards:
            triggers = self._progress.get(shard, unsaved.get(shard))
            if triggers is None:
                continue
            try:
                future = await self._publisher.submit(
                    f"{_PROGRESS_SUBJECT_PREFIX}{progress_key(shard)}", encode_shard_progress(triggers)
                )
            except Exception as error:
                log.warning("cannot save progress; will retry", shard=shard, error=str(error))
                self._keep_unsaved(shard, triggers)
                continue
            writes.append((shard, triggers, future))
            if pause_s and not self._stopping.is_set():
                await wait_event(self._stopping, pause_s)
            else:
                await asyncio.sleep(0)  # due fires go first between two documents
        if not writes:
            return
        await asyncio.wait([future for _, _, future in writes])
        for shard, triggers, future in writes:
            if future.cancelled() or future.exception() is not None:
                error = "cancelled" if future.cancelled() else str(future.exception())
                log.warning("cannot save progress; will retry", shard=shard, error=error)
                self._keep_unsaved(shard, triggers)

    def _keep_unsaved(self, shard: int, triggers: dict[str, ProgressEntry]) -> None:
        if self._progress.get(shard) is triggers:
            self._dirty.add(shard)
        elif shard not in self._progress:
            self._unsaved.setdefault(shard, triggers)
