"""Fast paths for the registry's hottest reads.

`RowReader` reads one trigger row by id. On SQLite it runs on the event loop through a plain read-only
`sqlite3` connection in autocommit mode: in WAL mode a reader never waits for a writer and a point read takes
microseconds, while a SQLAlchemy read through aiosqlite hops to its worker thread several times (about a
millisecond on a busy machine). Writes, and every read on other databases, go through the async session.

`ScheduleCache` keeps each trigger's compiled schedule per revision and its next fire time, so reading a trigger
compiles its schedule once per change and computes the next fire once per fire rather than once per request.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kairos.core.schedule import Schedule, compile_schedule
from kairos.registry.models import TriggerRow, TriggerStatsRow
from kairos.v1 import trigger_pb2

SCHEDULE_CACHE_SIZE = 100_000
READ_BUSY_TIMEOUT_S = 5.0


# A trigger's workspace id, revision and body, then its counters (None before its first counted trace event).
TriggerRecord = tuple[str, int, bytes, int | None, int | None, int | None, int | None]
COUNTERS = (
    TriggerStatsRow.fire_count,
    TriggerStatsRow.skipped_fire_count,
    TriggerStatsRow.consecutive_failures,
    TriggerStatsRow.last_fire_time_ns,
)
TRIGGER_RECORD = select(TriggerRow.workspace_id, TriggerRow.revision, TriggerRow.body, *COUNTERS).outerjoin(
    TriggerStatsRow, TriggerStatsRow.trigger_id == TriggerRow.id
)
SQLITE_TRIGGER_RECORD = (
    "SELECT t.workspace_id, t.revision, t.body, s.fire_count, s.skipped_fire_count, s.consecutive_failures,"
    " s.last_fire_time_ns FROM triggers t LEFT JOIN trigger_stats s ON s.trigger_id = t.id WHERE t.id = ?"
)


def fill_counters(info: trigger_pb2.TriggerInfo, counters) -> None:
    """Copies (fire count, skipped fires, consecutive failures, last fire ns) into `info`; all None means none yet."""
    fire_count, skipped, failures, last_fire_ns = counters
    info.fire_count = fire_count or 0
    info.skipped_fire_count = skipped or 0
    info.consecutive_failures = failures or 0
    if last_fire_ns:
        info.last_fire_time.FromNanoseconds(last_fire_ns)


class RowReader:
    """`trigger(id)` -> the TriggerRecord of a stored trigger, or None."""

    def __init__(self, database_url: str, sessions: async_sessionmaker[AsyncSession]) -> None:
        url = make_url(database_url)
        self._sessions = sessions
        self._sqlite_path = (
            url.database if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" else None
        )
        self._connection: sqlite3.Connection | None = None

    def _sqlite(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = sqlite3.connect(
                f"{Path(self._sqlite_path).absolute().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=READ_BUSY_TIMEOUT_S,
                check_same_thread=False,
            )
        return self._connection

    async def trigger(self, trigger_id: str) -> TriggerRecord | None:
        if self._sqlite_path is not None:
            return self._sqlite().execute(SQLITE_TRIGGER_RECORD, (trigger_id,)).fetchone()
        async with self._sessions() as session:
            row = (await session.execute(TRIGGER_RECORD.where(TriggerRow.id == trigger_id))).first()
        return tuple(row) if row is not None else None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class _Cached:
    schedule: Schedule
    computed_at: datetime | None = None
    next_fire: datetime | None = None


class ScheduleCache:
    """Compiled schedules, least recently used dropped beyond `size`. Triggers with the same cron schedule (expression,
    zone and DST rules: its fires do not depend on when the trigger was made) share one entry, so a workspace of many
    triggers on a few common schedules computes each next fire once; other schedules have one entry per
    (trigger name, revision)."""

    def __init__(self, size: int = SCHEDULE_CACHE_SIZE) -> None:
        self._size = size
        self._keys: OrderedDict[tuple[str, int], tuple[str, int] | bytes] = OrderedDict()
        self._entries: OrderedDict[tuple[str, int] | bytes, _Cached] = OrderedDict()

    @staticmethod
    def _remember(cache: OrderedDict, key, value, size: int) -> None:
        cache[key] = value
        if len(cache) > size:
            cache.popitem(last=False)

    def _entry(self, name: str, revision: int, trigger: trigger_pb2.Trigger | bytes) -> _Cached:
        """`trigger` is the stored trigger or its serialized body, decoded only when its schedule is not cached."""
        trigger_key = (name, revision)
        key = self._keys.get(trigger_key)
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            if isinstance(trigger, bytes):
                trigger = trigger_pb2.Trigger.FromString(trigger)
            source = trigger.source.schedule
            key = b"cron:" + source.SerializeToString(deterministic=True) if source.HasField("cron") else trigger_key
            self._remember(self._keys, trigger_key, key, self._size)
            entry = self._entries.get(key)
            if entry is None:
                schedule = compile_schedule(
                    source, anchor=trigger.create_time.ToDatetime(UTC), field_prefix="trigger.source.schedule"
                )
                entry = _Cached(schedule)
                self._remember(self._entries, key, entry, self._size)
        else:
            self._keys.move_to_end(trigger_key)
            self._entries.move_to_end(key)
        return entry

    def schedule(self, name: str, revision: int, trigger: trigger_pb2.Trigger | bytes) -> Schedule:
        return self._entry(name, revision, trigger).schedule

    def next_fire(
        self, name: str, revision: int, trigger: trigger_pb2.Trigger | bytes, now: datetime
    ) -> datetime | None:
        """The schedule's first fire strictly after `now`. A schedule's next fire after t is the same for every
        t in [t0, next fire after t0), so one answer serves every request until that fire passes."""
        entry = self._entry(name, revision, trigger)
        if (
            entry.computed_at is not None
            and entry.computed_at <= now
            and (entry.next_fire is None or now < entry.next_fire)
        ):
            return entry.next_fire
        entry.next_fire = entry.schedule.next_fire_after(now)
        entry.computed_at = now
        return entry.next_fire
