"""The registry's ScheduleCache answers next fire times exactly as a freshly compiled schedule does, whatever the
order of the instants it is asked about, and a new revision is compiled anew."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.core.schedule import compile_schedule
from kairos.registry.reads import ScheduleCache
from kairos.v1 import trigger_pb2

CREATED = datetime(2026, 3, 1, tzinfo=UTC)


def trigger(cron: str, revision: int = 1, timezone: str = "Europe/Berlin") -> trigger_pb2.Trigger:
    result = trigger_pb2.Trigger(name="workspaces/ws/triggers/t_1", revision=revision)
    result.source.schedule.cron.expression = cron
    result.source.schedule.timezone = timezone
    result.create_time.FromDatetime(CREATED)
    return result


@settings(max_examples=60, deadline=None)
@given(
    cron=st.sampled_from(["*/7 * * * *", "0 9 * * 1-5", "30 2 * * SUN", "0 0 29 2 *", "15 1-3 * 3,10 *"]),
    offsets=st.lists(st.integers(0, 400 * 24 * 3600), min_size=1, max_size=30),
)
def test_cached_next_fire_matches_a_fresh_computation(cron: str, offsets: list[int]) -> None:
    cache = ScheduleCache()
    stored = trigger(cron)
    fresh = compile_schedule(stored.source.schedule, anchor=CREATED)
    for offset in offsets:
        now = CREATED + timedelta(seconds=offset)
        assert cache.next_fire(stored.name, stored.revision, stored, now) == fresh.next_fire_after(now)
        assert cache.next_fire(stored.name, stored.revision, stored.SerializeToString(), now) == fresh.next_fire_after(
            now
        )


def test_a_new_revision_is_compiled_anew_and_the_oldest_entry_is_dropped() -> None:
    cache = ScheduleCache(size=1)
    now = CREATED + timedelta(hours=1)
    hourly, daily = trigger("0 * * * *", revision=1), trigger("0 9 * * *", revision=2)
    assert cache.next_fire(hourly.name, 1, hourly, now) == CREATED + timedelta(hours=2)
    assert cache.next_fire(daily.name, 2, daily, now) == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert cache.schedule(hourly.name, 1, hourly).canonical_expression == "0 * * * *"


def test_triggers_on_the_same_cron_schedule_share_one_entry_and_intervals_do_not() -> None:
    cache = ScheduleCache()
    now = CREATED + timedelta(days=3)
    first, second = trigger("0 9 * * 1-5"), trigger("0 9 * * 1-5")
    second.name = "workspaces/ws/triggers/t_2"
    second.create_time.FromDatetime(CREATED + timedelta(days=1))
    other_zone = trigger("0 9 * * 1-5", timezone="America/New_York")
    other_zone.name = "workspaces/ws/triggers/t_3"
    assert cache.schedule(first.name, 1, first) is cache.schedule(second.name, 1, second)
    assert cache.schedule(other_zone.name, 1, other_zone) is not cache.schedule(first.name, 1, first)
    expected = compile_schedule(first.source.schedule, anchor=CREATED).next_fire_after(now)
    assert cache.next_fire(first.name, 1, first, now) == cache.next_fire(second.name, 1, second, now) == expected

    every_hour, later = trigger("* * * * *"), trigger("* * * * *")
    for stored, created in ((every_hour, CREATED), (later, CREATED + timedelta(minutes=30))):
        stored.source.schedule.ClearField("cron")
        stored.source.schedule.interval.every.FromTimedelta(timedelta(hours=1))
        stored.create_time.FromDatetime(created)
    every_hour.name, later.name = "workspaces/ws/triggers/t_4", "workspaces/ws/triggers/t_5"
    start = CREATED + timedelta(minutes=45)
    assert cache.next_fire(every_hour.name, 1, every_hour, start) == CREATED + timedelta(hours=1)
    assert cache.next_fire(later.name, 1, later, start) == CREATED + timedelta(minutes=90)
