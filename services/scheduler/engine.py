"""The timer heap: keeps the next fire time of every active schedule trigger and publishes fires when due.

A fire's id is `<trigger>@<scheduled instant>`; it is the JetStream Msg-Id and unique on the run, so a
re-published fire (after a crash between publish and saving progress) never runs twice. Progress (the last
instant fired per trigger) is saved to the `kairos_scheduler` KV bucket after JetStream acknowledged the fire,
so a restarted scheduler neither repeats fires nor forgets those that fell due while it was down: those are
handled by the trigger's catch-up policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import statistics
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from kairos.core import messaging
from kairos.core.errors import KairosError
from kairos.core.names import parse_trigger
from kairos.core.schedule import Schedule, compile_schedule
from kairos.core.tasks import spawn
from kairos.v1 import fire_pb2, run_pb2, trigger_pb2

log = structlog.get_logger(__name__)

DEFAULT_CATCHUP_WINDOW = timedelta(hours=1)
DEFAULT_CATCHUP_MAX_FIRES = 100
Mode = trigger_pb2.CatchupMode


def fire_id(trigger_name: str, instant: datetime) -> str:
    return f"{trigger_name}@{instant.astimezone(UTC).isoformat().replace('+00:00', 'Z')}"


@dataclass
class Planned:
    trigger: trigger_pb2.Trigger
    schedule: Schedule
    next_fire: datetime | None
    generation: int


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


class SchedulerEngine:
    """Owns the plan of every active schedule trigger it is told about, and fires them on time."""

    def __init__(self, js: JetStreamContext, progress: KeyValue, replica_id: str) -> None:
        self._js = js
        self._progress = progress
        self.replica_id = replica_id
        self._plans: dict[str, Planned] = {}
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._sequence = itertools.count()
        self._generations = itertools.count(1)
        self._changes: asyncio.Queue[tuple[str, trigger_pb2.Trigger | None]] = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.fires_published = 0
        self.skipped_fires = 0
        self._lags_ms: deque[float] = deque(maxlen=1000)

    @property
    def scheduled_triggers(self) -> int:
        return len(self._plans)

    def lag_percentiles(self) -> tuple[float, float]:
        if not self._lags_ms:
            return 0.0, 0.0
        ordered = sorted(self._lags_ms)
        return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def on_change(self, key: str, trigger: trigger_pb2.Trigger | None) -> None:
        """Change-feed callback (synchronous): queues the change for the planner task."""
        self._changes.put_nowait((key, trigger))

    async def start(self) -> None:
        self._tasks = [
            spawn(self._apply_changes(), "scheduler-changes"),
            spawn(self._fire_loop(), "scheduler-timer"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _apply_changes(self) -> None:
        while True:
            key, trigger = await self._changes.get()
            try:
                await self._plan(key, trigger)
            except Exception:
                log.exception("cannot plan trigger", key=key)

    async def _last_fired(self, key: str) -> datetime | None:
        try:
            entry = await self._progress.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return datetime.fromisoformat(entry.value.decode()) if entry.value else None

    async def _plan(self, key: str, trigger: trigger_pb2.Trigger | None) -> None:
        active = (
            trigger is not None
            and trigger.state == trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE
            and trigger.source.HasField("schedule")
        )
        if not active:
            self._plans.pop(key, None)
            return
        try:
            schedule = compile_schedule(trigger.source.schedule, anchor=trigger.create_time.ToDatetime(UTC))
        except KairosError as error:
            log.error("trigger has an invalid schedule; not scheduling it", key=key, error=str(error))
            self._plans.pop(key, None)
            return
        now = datetime.now(UTC)
        changed_at = trigger.update_time.ToDatetime(UTC) - timedelta(microseconds=1)
        last_fired = await self._last_fired(key)
        since = max(last_fired, changed_at) if last_fired else changed_at
        missed = list(schedule.fires_between(since, now)) if since < now else []
        due, skipped = catchup_fires(trigger, missed, now)
        if skipped:
            self.skipped_fires += skipped
            log.info("missed fires skipped by the catch-up policy", key=key, skipped=skipped)
        generation = next(self._generations)
        plan = Planned(trigger, schedule, schedule.next_fire_after(max(now, since)), generation)
        self._plans[key] = plan
        for instant in due:
            heapq.heappush(self._heap, (instant, next(self._sequence), key, generation))
        if plan.next_fire is not None:
            heapq.heappush(self._heap, (plan.next_fire, next(self._sequence), key, generation))
        self._wakeup.set()

    async def _fire_loop(self) -> None:
        while True:
            now = datetime.now(UTC)
            while self._heap and self._heap[0][0] <= now:
                instant, _, key, generation = heapq.heappop(self._heap)
                plan = self._plans.get(key)
                if plan is None or plan.generation != generation:
                    continue
                await self._fire(key, plan, instant)
                if instant == plan.next_fire:
                    plan.next_fire = plan.schedule.next_fire_after(instant)
                    if plan.next_fire is not None:
                        heapq.heappush(self._heap, (plan.next_fire, next(self._sequence), key, generation))
            self._wakeup.clear()
            delay = (self._heap[0][0] - datetime.now(UTC)).total_seconds() if self._heap else 60.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)

    async def _fire(self, key: str, plan: Planned, instant: datetime) -> None:
        trigger = plan.trigger
        name = parse_trigger(trigger.name, "trigger")
        fire = fire_pb2.FireRequest(
            fire_id=fire_id(trigger.name, instant),
            trigger=trigger.name,
            trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE,
            action=trigger.action,
            policies=trigger.policies,
            timezone=plan.schedule.timezone,
            trigger_revision=trigger.revision,
        )
        fire.scheduled_time.FromDatetime(instant)
        fire.fire_time.GetCurrentTime()
        while True:
            try:
                await messaging.publish_fire(
                    self._js,
                    messaging.fire_subject(name.workspace, name.trigger),
                    fire.SerializeToString(),
                    fire.fire_id,
                )
                break
            except Exception as error:
                log.warning("fire not acknowledged; retrying", fire_id=fire.fire_id, error=str(error))
                await asyncio.sleep(1.0)
        self._lags_ms.append((datetime.now(UTC) - instant).total_seconds() * 1000)
        self.fires_published += 1
        await self._progress.put(key, instant.isoformat().encode())
