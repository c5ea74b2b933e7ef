"""The scheduler's memo of next fire times (`NextFireCache`) always answers what the schedule computes, for any
order of questions: random cron schedules in DST zones, asked from random instants in random order."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.core.schedule import compile_schedule
from kairos.scheduler.engine import NextFireCache
from kairos.v1 import trigger_pb2

START_US = int(datetime(2026, 3, 7, tzinfo=UTC).timestamp()) * 1_000_000  # a day before New York springs forward
EXPRESSIONS = ("0 9 * * 1-5", "30 2 * * *", "*/20 * * * *", "0 */6 * * *", "15 1 * * SUN", "0 0 1 * *", "*/7 * * * * *")
ZONES = ("UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe")


def cron(expression: str, zone: str):
    source = trigger_pb2.ScheduleSource(timezone=zone)
    source.cron.expression = expression
    return compile_schedule(source, anchor=datetime.fromtimestamp(START_US / 1e6, UTC))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(EXPRESSIONS),
            st.sampled_from(ZONES),
            st.integers(0, 3 * 86_400 * 1_000_000),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_cached_answers_equal_the_schedule(questions) -> None:
    cache = NextFireCache()
    for expression, zone, offset_us, follow in questions:
        schedule = cron(expression, zone)
        after = START_US + offset_us
        expected = schedule.next_fire_after_us(after)
        assert cache.next_after(schedule, after) == expected
        if follow and expected is not None:  # walk forward from the answer, as the timer does after a fire
            assert cache.next_after(schedule, expected) == schedule.next_fire_after_us(expected)
            assert cache.next_after(schedule, expected - 1) == expected


def test_one_shot_done_and_shared_stretch() -> None:
    schedule = cron("0 9 * * *", "America/New_York")
    cache = NextFireCache()
    first = cache.next_after(schedule, START_US)
    assert first == schedule.next_fire_after_us(START_US)
    assert all(cache.next_after(schedule, after) == first for after in range(START_US, first, 3_600_000_000))
    source = trigger_pb2.ScheduleSource()
    source.one_shot.fire_time.FromMicroseconds(START_US + 5)
    once = compile_schedule(source, anchor=datetime.fromtimestamp(START_US / 1e6, UTC))
    assert cache.next_after(once, START_US) == START_US + 5
    assert cache.next_after(once, START_US + 5) is None
