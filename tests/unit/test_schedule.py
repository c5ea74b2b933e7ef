"""Tests for kairos.core.schedule.

The cron evaluator is checked against an oracle written here from scratch: it walks every wall-clock minute
of a window, matches it with a deliberately simple field matcher, maps matches to UTC by the documented DST
rule (using only zoneinfo's fold round trip), and must agree exactly with `fires_between` and
`next_fire_after` for random expressions around real offset transitions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kairos.core.errors import KairosError
from kairos.core.schedule import Schedule, compile_schedule
from kairos.v1 import trigger_pb2 as pb

ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)
NY = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ts(instant: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def cron(expression: str, timezone: str = "", **kwargs: object) -> Schedule:
    source = pb.ScheduleSource(cron=pb.CronSpec(expression=expression), timezone=timezone, **kwargs)
    return compile_schedule(source, anchor=ANCHOR)


def fires(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    return list(schedule.fires_between(start, end))


# ------------------------------------------------------------------------------------------------ oracle

_NAMES = {
    **{n: i for i, n in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])},
    **{
        n: i + 1
        for i, n in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])
    },
}


def _oracle_values(text: str, lo: int, hi: int, star_hi: int) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            first, last = lo, star_hi
        elif "-" in base:
            a, b = base.split("-")
            first, last = int(_NAMES.get(a, a)), int(_NAMES.get(b, b))
        else:
            first = int(_NAMES.get(base, base))
            last = hi if step_text else first
        values.update(range(first, last + 1, step))
    return values


def oracle_matcher(expression: str) -> Callable[[datetime], bool]:
    """A five-field cron matcher: `*`, numbers, a-b, */n, a-b/n, a/n, lists; dom/dow OR when both restricted."""
    minute_t, hour_t, dom_t, month_t, dow_t = expression.split()
    minutes = _oracle_values(minute_t, 0, 59, 59)
    hours = _oracle_values(hour_t, 0, 23, 23)
    doms = _oracle_values(dom_t, 1, 31, 31)
    months = _oracle_values(month_t, 1, 12, 12)
    dows = {d % 7 for d in _oracle_values(dow_t, 0, 7, 6)}
    both_restricted = dom_t != "*" and dow_t != "*"

    def match(wall: datetime) -> bool:
        if wall.minute not in minutes or wall.hour not in hours or wall.month not in months:
            return False
        dom_ok, dow_ok = wall.day in doms, wall.isoweekday() % 7 in dows
        return (dom_ok or dow_ok) if both_restricted else (dom_ok and dow_ok)

    return match


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _end_of_gap(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """First instant in (before, after] whose offset differs from the offset at `before` (bisection)."""
    offset = before.astimezone(zone).utcoffset()
    while after - before > timedelta(seconds=1):
        mid = before + (after - before) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(zone).utcoffset() == offset:
            before = mid
        else:
            after = mid
    return after


def oracle_instants(wall: datetime, zone: ZoneInfo, hour_wildcard: bool, gap: int, overlap: int):
    """UTC instants a matching wall time stands for, by the documented rule."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    real = sorted({u for u in (first, second) if _wall(u, zone) == wall})
    if not real:  # the wall time is in a spring-forward gap
        if hour_wildcard or gap == pb.DST_GAP_RULE_SKIP:
            return []
        return [_end_of_gap(zone, min(first, second), max(first, second))]
    if len(real) == 2 and not hour_wildcard:
        if overlap == pb.DST_OVERLAP_RULE_LAST:
            return [real[1]]
        if overlap != pb.DST_OVERLAP_RULE_BOTH:
            return [real[0]]
    return real


def oracle_fires(
    expression: str, zone_name: str, gap: int, overlap: int, start: datetime, end: datetime
) -> list[datetime]:
    """Every fire in (start, end] found by walking each wall-clock minute around the window."""
    zone = ZoneInfo(zone_name)
    match = oracle_matcher(expression)
    hour_wildcard = expression.split()[1].startswith("*")
    wall = start.replace(tzinfo=None, second=0, microsecond=0) - timedelta(days=1)
    stop = end.replace(tzinfo=None) + timedelta(days=1)
    found: set[datetime] = set()
    while wall <= stop:
        if match(wall):
            found.update(oracle_instants(wall, zone, hour_wildcard, gap, overlap))
        wall += timedelta(minutes=1)
    return sorted(u for u in found if start < u <= end)


# ---------------------------------------------------------------------------------- property: vs oracle

# (zone, local date of an offset change, hours of the day worth favouring around it)
TRANSITIONS = [
    (NY, date(2026, 3, 8), [1, 2, 3]),
    (NY, date(2026, 11, 1), [0, 1, 2]),
    ("Europe/Berlin", date(2026, 3, 29), [1, 2, 3]),
    ("Europe/Berlin", date(2026, 10, 25), [1, 2, 3]),
    ("Australia/Lord_Howe", date(2026, 4, 5), [1, 2]),  # 30-minute overlap
    ("Australia/Lord_Howe", date(2026, 10, 4), [2, 3]),  # 30-minute gap
    ("Pacific/Apia", date(2011, 12, 30), [0, 9, 12, 23]),  # the whole day 2011-12-30 does not exist
    ("Europe/Moscow", date(2011, 3, 27), [1, 2, 3]),  # last spring-forward, never undone
    ("Europe/Moscow", date(2014, 10, 26), [0, 1, 2]),  # permanent fall-back
]


def _field(values: st.SearchStrategy[int], span: int) -> st.SearchStrategy[str]:
    step = st.integers(1, min(span, 20))
    pair = st.tuples(values, values).map(sorted)
    item = st.one_of(
        values.map(str),
        pair.map(lambda ab: f"{ab[0]}-{ab[1]}"),
        st.tuples(pair, step).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
        step.map(lambda n: f"*/{n}"),
        st.tuples(values, step).map(lambda t: f"{t[0]}/{t[1]}"),
    )
    return st.one_of(st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join))


@st.composite
def transition_cases(draw: st.DrawFn) -> tuple[str, str, int, int, datetime, datetime]:
    zone_name, day, hours = draw(st.sampled_from(TRANSITIONS))
    weekday = day.isoweekday() % 7
    minute = _field(st.one_of(st.sampled_from([0, 15, 29, 30, 45, 59]), st.integers(0, 59)), 60)
    hour = _field(st.one_of(st.sampled_from(hours), st.integers(0, 23)), 24)
    near = sorted({min(max(d, 1), 31) for d in (day.day - 1, day.day, day.day + 1)})
    dom = _field(st.one_of(st.sampled_from(near), st.integers(1, 31)), 31)
    month = st.one_of(st.just("*"), st.just(str(day.month)), _field(st.integers(1, 12), 12))
    dow = _field(st.one_of(st.sampled_from([weekday, (weekday + 1) % 7, 7]), st.integers(0, 7)), 8)
    expression = " ".join(draw(f) for f in (minute, hour, dom, month, dow))
    gap = draw(st.sampled_from([pb.DST_GAP_RULE_UNSPECIFIED, pb.DST_GAP_RULE_SHIFT, pb.DST_GAP_RULE_SKIP]))
    overlap = draw(st.sampled_from([0, pb.DST_OVERLAP_RULE_FIRST, pb.DST_OVERLAP_RULE_LAST, 3]))
    zone = ZoneInfo(zone_name)
    start = datetime.combine(day - timedelta(days=1), datetime.min.time(), zone).astimezone(UTC)
    return expression, zone_name, gap, overlap, start, start + timedelta(days=3)


def compile_or_never_fires(expression: str, zone_name: str, gap: int, overlap: int) -> Schedule | None:
    """The schedule, or None when it is rejected for naming a day no selected month has (e.g. 31 4)."""
    try:
        return cron(expression, zone_name, dst_gap_rule=gap, dst_overlap_rule=overlap)
    except KairosError as exc:
        assert "never fires" in exc.message, exc
        return None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transition_cases())
def test_fires_between_matches_minute_by_minute_oracle(case) -> None:
    expression, zone_name, gap, overlap, start, end = case
    expected = oracle_fires(expression, zone_name, gap, overlap, start, end)
    schedule = compile_or_never_fires(expression, zone_name, gap, overlap)
    if schedule is None:
        assert expected == []
        return
    assert fires(schedule, start, end) == expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transition_cases(), st.integers(0, 3 * 86_400 - 1), st.integers(0, 999_999))
def test_next_fire_after_matches_oracle_from_any_instant(case, seconds: int, micros: int) -> None:
    expression, zone_name, gap, overlap, start, end = case
    schedule = compile_or_never_fires(expression, zone_name, gap, overlap)
    assume(schedule is not None)
    assert schedule is not None
    after = start + timedelta(seconds=seconds, microseconds=micros)
    expected = oracle_fires(expression, zone_name, gap, overlap, after, end)
    got = schedule.next_fire_after(after)
    if expected:
        assert got == expected[0]
    else:  # nothing in the window: the next fire, if any, lies beyond it
        assert got is None or got > end


# --------------------------------------------------------------------------------- readable DST examples


def test_nine_am_new_york_fires_once_on_both_transition_days() -> None:
    schedule = cron("0 9 * * *", NY)
    assert fires(schedule, utc(2026, 3, 7), utc(2026, 3, 10)) == [
        utc(2026, 3, 7, 14),  # EST
        utc(2026, 3, 8, 13),  # EDT from 02:00 that morning
        utc(2026, 3, 9, 13),
    ]
    assert fires(schedule, utc(2026, 10, 31), utc(2026, 11, 3)) == [
        utc(2026, 10, 31, 13),  # EDT
        utc(2026, 11, 1, 14),  # EST from 02:00 that morning
        utc(2026, 11, 2, 14),
    ]


def test_time_in_spring_gap_shifts_to_end_of_gap_or_is_skipped() -> None:
    window = (utc(2026, 3, 8), utc(2026, 3, 9))
    shifted = cron("30 2 * * *", NY)
    assert fires(shifted, *window) == [utc(2026, 3, 8, 7)]  # 03:00 EDT, the first instant after the jump
    assert shifted.local_time(utc(2026, 3, 8, 7)) == "2026-03-08T03:00:00-04:00"
    skipped = cron("30 2 * * *", NY, dst_gap_rule=pb.DST_GAP_RULE_SKIP)
    assert fires(skipped, *window) == []
    assert fires(skipped, utc(2026, 3, 9), utc(2026, 3, 10)) == [utc(2026, 3, 9, 6, 30)]


def test_gap_fire_found_from_the_last_second_before_the_jump() -> None:
    schedule = cron("30 2 * * *", NY)
    jump = utc(2026, 3, 8, 7)  # 02:00 EST becomes 03:00 EDT
    for after in (jump - timedelta(seconds=1), jump - timedelta(microseconds=1), jump - timedelta(hours=3)):
        assert schedule.next_fire_after(after) == jump
    assert schedule.next_fire_after(jump) == utc(2026, 3, 9, 6, 30)


def test_shifted_gap_times_fire_once() -> None:
    schedule = cron("0,30 2,3 * * *", NY)  # 02:00 and 02:30 shift onto 03:00, which also matches
    assert fires(schedule, utc(2026, 3, 8), utc(2026, 3, 8, 12)) == [utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 30)]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (pb.DST_OVERLAP_RULE_UNSPECIFIED, [utc(2026, 11, 1, 5, 30)]),
        (pb.DST_OVERLAP_RULE_FIRST, [utc(2026, 11, 1, 5, 30)]),
        (pb.DST_OVERLAP_RULE_LAST, [utc(2026, 11, 1, 6, 30)]),
        (pb.DST_OVERLAP_RULE_BOTH, [utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30)]),
    ],
)
def test_time_in_fall_back_overlap_follows_overlap_rule(rule: int, expected: list[datetime]) -> None:
    schedule = cron("30 1 * * *", NY, dst_overlap_rule=rule)
    assert fires(schedule, utc(2026, 11, 1), utc(2026, 11, 2)) == expected


def test_hour_wildcard_follows_real_time_through_both_transitions() -> None:
    every_half_hour = cron("*/30 * * * *", NY)
    got = fires(every_half_hour, utc(2026, 11, 1, 4, 45), utc(2026, 11, 1, 7, 15))
    assert got == [
        utc(2026, 11, 1, 5),
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 1, 6),
        utc(2026, 11, 1, 6, 30),
        utc(2026, 11, 1, 7),
    ]
    assert [every_half_hour.local_time(u)[11:] for u in got] == [
        "01:00:00-04:00",
        "01:30:00-04:00",
        "01:00:00-05:00",
        "01:30:00-05:00",
        "02:00:00-05:00",
    ]
    # Spring forward: 02:00 and 02:30 do not exist and are not shifted.
    assert fires(cron("30 * * * *", NY), utc(2026, 3, 8, 5), utc(2026, 3, 8, 8)) == [
        utc(2026, 3, 8, 5, 30),  # 00:30 EST
        utc(2026, 3, 8, 6, 30),  # 01:30 EST
        utc(2026, 3, 8, 7, 30),  # 03:30 EDT
    ]


def test_apia_skipped_day_and_lord_howe_half_hour_gap() -> None:
    apia = cron("0 9 * * *", "Pacific/Apia")
    assert fires(apia, utc(2011, 12, 29), utc(2011, 12, 31, 12)) == [
        utc(2011, 12, 29, 19),  # Dec 29 09:00 at -10
        utc(2011, 12, 30, 10),  # Dec 30 never existed: shifted to Dec 31 00:00 at +14
        utc(2011, 12, 30, 19),  # Dec 31 09:00 at +14
    ]
    assert (
        fires(
            cron("0 9 * * *", "Pacific/Apia", dst_gap_rule=pb.DST_GAP_RULE_SKIP),
            utc(2011, 12, 30),
            utc(2011, 12, 30, 18),
        )
        == []
    )
    lord_howe = cron("15 2 * * *", "Australia/Lord_Howe")  # 02:00 -> 02:30 on 2026-10-04
    (shifted,) = fires(lord_howe, utc(2026, 10, 3, 12), utc(2026, 10, 4, 12))
    assert lord_howe.local_time(shifted) == "2026-10-04T02:30:00+11:00"


# ------------------------------------------------------------------------------ expression forms & output


def test_six_fields_are_seconds_first() -> None:
    schedule = cron("30 0 9 * * *", NY)
    assert schedule.canonical_expression == "30 0 9 * * *"
    assert fires(schedule, utc(2026, 6, 1), utc(2026, 6, 2)) == [utc(2026, 6, 1, 13, 0, 30)]
    every_20s = cron("*/20 * * * * *")
    assert fires(every_20s, utc(2026, 6, 1), utc(2026, 6, 1, 0, 1)) == [
        utc(2026, 6, 1, 0, 0, 20),
        utc(2026, 6, 1, 0, 0, 40),
        utc(2026, 6, 1, 0, 1),
    ]
    # The hour is a wildcard: 01:30:15 happens twice on the fall-back day.
    assert fires(cron("15 30 * * * *", NY), utc(2026, 11, 1, 5), utc(2026, 11, 1, 7)) == [
        utc(2026, 11, 1, 5, 30, 15),
        utc(2026, 11, 1, 6, 30, 15),
    ]


@pytest.mark.parametrize(
    ("macro", "canonical"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("  @DAILY ", "0 0 * * *"),
    ],
)
def test_macros_expand(macro: str, canonical: str) -> None:
    schedule = cron(macro)
    assert schedule.canonical_expression == canonical
    window = (utc(2025, 12, 31, 23, 30), utc(2026, 1, 9))
    assert fires(schedule, *window) == fires(cron(canonical), *window)
    assert fires(schedule, *window)  # every macro fires in the window (all fire on 2026-01-01)


def test_macro_semantics_and_hourly_is_an_hour_wildcard() -> None:
    assert cron("@weekly").next_fire_after(utc(2026, 1, 1)) == utc(2026, 1, 4)  # the next Sunday
    assert cron("@yearly").next_fire_after(utc(2026, 1, 1)) == utc(2027, 1, 1)
    hourly = fires(cron("@hourly", NY), utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 7, 30))
    assert hourly == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)]  # 01:00 twice


def test_canonical_form_and_descriptions() -> None:
    schedule = cron("  0   9 *  * mon-fri ", NY)
    assert schedule.canonical_expression == "0 9 * * MON-FRI"
    assert schedule.timezone == NY
    assert schedule.zone == ZoneInfo(NY)
    assert schedule.description == "At 09:00 AM, Monday through Friday (America/New_York)"
    assert schedule.describe() == schedule.description
    assert cron("*/5 * * * *").description == "Every 5 minutes (UTC)"
    assert cron("*/5 * * * *").timezone == "UTC"


def test_names_last_day_and_nth_weekday() -> None:
    assert fires(cron("0 12 L * *"), utc(2026, 1, 1), utc(2026, 4, 1)) == [
        utc(2026, 1, 31, 12),
        utc(2026, 2, 28, 12),
        utc(2026, 3, 31, 12),
    ]
    assert fires(cron("0 9 * * MON#1"), utc(2026, 1, 1), utc(2026, 3, 31)) == [
        utc(2026, 1, 5, 9),
        utc(2026, 2, 2, 9),
        utc(2026, 3, 2, 9),
    ]
    assert fires(cron("0 0 1 JAN-MAR *"), utc(2026, 1, 1), utc(2026, 12, 31)) == [
        utc(2026, 2, 1),
        utc(2026, 3, 1),
    ]


def test_equal_range_is_one_value() -> None:
    # croniter alone would widen `5-5` to the whole field.
    assert fires(cron("5-5 10 * * *"), utc(2026, 1, 1), utc(2026, 1, 2)) == [utc(2026, 1, 1, 10, 5)]


def test_to_proto_fills_output_fields_and_echoes_input() -> None:
    source = pb.ScheduleSource(
        cron=pb.CronSpec(expression="@daily", canonical_expression="ignored"),
        jitter=Duration(seconds=30),
        dst_overlap_rule=pb.DST_OVERLAP_RULE_BOTH,
    )
    proto = compile_schedule(source, anchor=ANCHOR).to_proto()
    assert proto.cron.expression == "@daily"
    assert proto.cron.canonical_expression == "0 0 * * *"
    assert proto.cron.description == "At 12:00 AM"
    assert proto.timezone == ""  # echoed as given
    assert proto.jitter.seconds == 30
    assert proto.dst_overlap_rule == pb.DST_OVERLAP_RULE_BOTH
    one_shot = pb.ScheduleSource(one_shot=pb.OneShotSpec(fire_time=ts(utc(2026, 12, 1, 9))), timezone=NY)
    assert compile_schedule(one_shot, anchor=ANCHOR).to_proto() == one_shot


def test_parsed_expressions_are_shared() -> None:
    assert cron("7 7 * * *").plan == cron("7 7 * * *").plan
    assert cron("7 7 * * *").plan.rule is cron("7 7 * * *", NY).plan.rule  # type: ignore[union-attr]


def test_next_fire_after_is_strict_and_accepts_any_aware_datetime() -> None:
    schedule = cron("0 9 * * *", NY)
    first = schedule.next_fire_after(utc(2026, 6, 1))
    assert first == utc(2026, 6, 1, 13)
    assert schedule.next_fire_after(first) == utc(2026, 6, 2, 13)
    assert schedule.next_fire_after(first - timedelta(microseconds=1)) == first
    assert schedule.next_fire_after(datetime(2026, 6, 1, tzinfo=ZoneInfo(NY))) == first
    assert first is not None and first.tzinfo is UTC
    with pytest.raises(ValueError):
        schedule.next_fire_after(datetime(2026, 6, 1))


# ----------------------------------------------------------------------------------- intervals & one-shots


def interval(every: int, *, start=None, end=None, start_now=False, anchor=ANCHOR, timezone="") -> Schedule:
    spec = pb.IntervalSpec(every=Duration(seconds=every), start_now=start_now)
    if start is not None:
        spec.start_time.CopyFrom(ts(start))
    if end is not None:
        spec.end_time.CopyFrom(ts(end))
    return compile_schedule(pb.ScheduleSource(interval=spec, timezone=timezone), anchor=anchor)


def test_interval_counts_real_time_from_start_and_stops_before_end() -> None:
    schedule = interval(300, start=utc(2026, 3, 8, 6, 50), end=utc(2026, 3, 8, 7, 10), timezone=NY)
    # Crosses the New York spring-forward at 07:00Z without any hiccup.
    assert fires(schedule, utc(2026, 3, 1), utc(2026, 4, 1)) == [
        utc(2026, 3, 8, 6, 50),  # start_time itself is the first fire
        utc(2026, 3, 8, 6, 55),
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 8, 7, 5),
    ]
    assert schedule.next_fire_after(utc(2026, 3, 8, 6, 49)) == utc(2026, 3, 8, 6, 50)
    assert schedule.next_fire_after(utc(2026, 3, 8, 7, 5)) is None  # 07:10 is end_time: excluded
    assert schedule.description == (
        "Every 5 minutes from 2026-03-08T01:50:00-05:00 until 2026-03-08T03:10:00-04:00 (America/New_York)"
    )


def test_interval_defaults_to_anchor() -> None:
    schedule = interval(90, anchor=utc(2026, 5, 5, 12))
    assert schedule.next_fire_after(utc(2026, 5, 5)) == utc(2026, 5, 5, 12)
    assert schedule.next_fire_after(utc(2026, 5, 5, 12)) == utc(2026, 5, 5, 12, 1, 30)
    assert schedule.next_fire_after(utc(2026, 5, 6, 12, 0, 1)) == utc(2026, 5, 6, 12, 1, 30)  # 960 periods
    assert schedule.description == "Every 90 seconds (UTC)"
    assert interval(300).description == "Every 5 minutes (UTC)"


def test_interval_start_now_fires_at_anchor_then_follows_period() -> None:
    anchor = utc(2026, 5, 5, 12, 7)
    future = interval(3600, start=utc(2026, 5, 5, 15), start_now=True, anchor=anchor)
    assert fires(future, anchor - timedelta(seconds=1), utc(2026, 5, 5, 17)) == [
        anchor,
        utc(2026, 5, 5, 15),
        utc(2026, 5, 5, 16),
        utc(2026, 5, 5, 17),
    ]
    past = interval(3600, start=utc(2026, 5, 1), start_now=True, anchor=anchor)
    assert fires(past, utc(2026, 4, 1), utc(2026, 5, 5, 14)) == [anchor, utc(2026, 5, 5, 13), utc(2026, 5, 5, 14)]
    without = interval(3600, start=utc(2026, 5, 1), anchor=anchor)
    assert without.next_fire_after(utc(2026, 4, 1)) == utc(2026, 5, 1)
    assert without.next_fire_after(anchor) == utc(2026, 5, 5, 13)


def test_the_last_fires_are_those_datetime_can_express() -> None:
    """9999-12-31T23:59:59.999999Z is the last instant; a fire beyond it means the schedule is done."""
    last_second = interval(1, start=utc(9999, 12, 31, 23, 59, 58))
    assert last_second.next_fire_after(utc(9999, 12, 31, 23, 59, 58)) == utc(9999, 12, 31, 23, 59, 59)
    assert last_second.next_fire_after(utc(9999, 12, 31, 23, 59, 59)) is None
    assert last_second.next_fire_after_us(253_402_300_799_000_000 - 1) == 253_402_300_799_000_000
    assert cron("0 0 1 1 *").next_fire_after(utc(9999, 1, 1)) is None
    assert cron("0 0 1 1 *", timezone="Asia/Tokyo").next_fire_after(utc(9999, 1, 1)) is None


def test_one_shot_fires_once() -> None:
    source = pb.ScheduleSource(one_shot=pb.OneShotSpec(fire_time=ts(utc(2026, 12, 1, 9))))
    schedule = compile_schedule(source, anchor=ANCHOR)
    assert schedule.next_fire_after(utc(2026, 1, 1)) == utc(2026, 12, 1, 9)
    assert schedule.next_fire_after(utc(2026, 12, 1, 9)) is None
    assert fires(schedule, utc(2026, 1, 1), utc(2027, 1, 1)) == [utc(2026, 12, 1, 9)]
    assert schedule.canonical_expression == ""
    assert schedule.description == "Once at 2026-12-01T09:00:00+00:00 (UTC)"
    source.timezone = NY
    assert compile_schedule(source, anchor=ANCHOR).description == "Once at 2026-12-01T04:00:00-05:00 (America/New_York)"


# ------------------------------------------------------------------------------------------------ jitter


def test_jitter_is_deterministic_bounded_and_spread() -> None:
    schedule = cron("0 * * * *", jitter=Duration(seconds=600))
    fire = utc(2026, 6, 1, 10)
    values = {schedule.jitter_for(fire, f"triggers/t{i}") for i in range(50)}
    assert all(timedelta(0) <= v < timedelta(seconds=600) for v in values)
    assert len(values) > 40
    assert schedule.jitter_for(fire, "triggers/a") == schedule.jitter_for(fire, "triggers/a")
    assert schedule.jitter_for(fire, "triggers/a") != schedule.jitter_for(fire + timedelta(hours=1), "triggers/a")
    assert cron("0 * * * *").jitter_for(fire, "triggers/a") == timedelta(0)


def test_jitter_never_reaches_the_next_fire() -> None:
    schedule = compile_schedule(
        pb.ScheduleSource(interval=pb.IntervalSpec(every=Duration(seconds=10)), jitter=Duration(seconds=3600)),
        anchor=ANCHOR,
    )
    values = [schedule.jitter_for(ANCHOR + timedelta(seconds=10 * i), "triggers/x") for i in range(200)]
    assert all(timedelta(0) <= v < timedelta(seconds=10) for v in values)
    assert max(values) > timedelta(seconds=5)  # not collapsed to zero
    # Shifted gap fires: 02:00-02:59 in NY all fire at 03:00, the next fire is 03:01.
    dense = cron("* 2,3 * * *", NY, jitter=Duration(seconds=3600))
    shifted = utc(2026, 3, 8, 7)
    assert dense.next_fire_after(shifted) == utc(2026, 3, 8, 7, 1)
    assert all(dense.jitter_for(shifted, f"t{i}") < timedelta(minutes=1) for i in range(50))


# -------------------------------------------------------------------------------------------- validation


def _source(**kwargs: object) -> pb.ScheduleSource:
    return pb.ScheduleSource(**kwargs)


INVALID = [
    (_source(), "MISSING_SCHEDULE", "schedule"),
    (_source(cron=pb.CronSpec(expression="")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="* * * *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="0 0 0 * * * 2026")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="60 * * * *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="* 24 * * *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="* * 0 * *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="* * * 13 *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="* * * * 8")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="*/0 * * * *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="30-10 * * * *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="0 0 30 2 *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="H * * * *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="@reboot")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="0 0 * * FOO")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="0 0 L * MON")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (_source(cron=pb.CronSpec(expression="0 0\u00a00 * *")), "INVALID_CRON_EXPRESSION", "schedule.cron.expression"),
    (
        _source(cron=pb.CronSpec(expression="0 0 * * " + ",".join(["1"] * 200))),
        "INVALID_CRON_EXPRESSION",
        "schedule.cron.expression",
    ),
    (_source(cron=pb.CronSpec(expression="@daily"), timezone="Mars/Olympus"), "UNKNOWN_TIME_ZONE", "schedule.timezone"),
    (
        _source(cron=pb.CronSpec(expression="@daily"), timezone="../etc/passwd"),
        "UNKNOWN_TIME_ZONE",
        "schedule.timezone",
    ),
    (_source(interval=pb.IntervalSpec()), "INVALID_INTERVAL", "schedule.interval.every"),
    (
        _source(interval=pb.IntervalSpec(every=Duration(nanos=500_000_000))),
        "INVALID_INTERVAL",
        "schedule.interval.every",
    ),
    (
        _source(interval=pb.IntervalSpec(every=Duration(seconds=1, nanos=500_000_000))),
        "INVALID_INTERVAL",
        "schedule.interval.every",
    ),
    (_source(interval=pb.IntervalSpec(every=Duration(seconds=-60))), "INVALID_INTERVAL", "schedule.interval.every"),
    (
        _source(
            interval=pb.IntervalSpec(
                every=Duration(seconds=60), start_time=ts(utc(2026, 2, 1)), end_time=ts(utc(2026, 2, 1))
            )
        ),
        "INVALID_TIME_RANGE",
        "schedule.interval.end_time",
    ),
    (
        _source(interval=pb.IntervalSpec(every=Duration(seconds=60), end_time=ts(ANCHOR - timedelta(seconds=1)))),
        "INVALID_TIME_RANGE",
        "schedule.interval.end_time",
    ),
    (_source(one_shot=pb.OneShotSpec()), "INVALID_TIME_RANGE", "schedule.one_shot.fire_time"),
    (_source(cron=pb.CronSpec(expression="@daily"), jitter=Duration(seconds=-1)), "INVALID_JITTER", "schedule.jitter"),
    (_source(cron=pb.CronSpec(expression="@daily"), jitter=Duration(nanos=-1)), "INVALID_JITTER", "schedule.jitter"),
    (_source(cron=pb.CronSpec(expression="@daily"), dst_gap_rule=7), "INVALID_DST_RULE", "schedule.dst_gap_rule"),
    (
        _source(cron=pb.CronSpec(expression="@daily"), dst_overlap_rule=9),
        "INVALID_DST_RULE",
        "schedule.dst_overlap_rule",
    ),
]


@pytest.mark.parametrize(("source", "reason", "field_path"), INVALID)
def test_invalid_sources_name_reason_and_field(source: pb.ScheduleSource, reason: str, field_path: str) -> None:
    with pytest.raises(KairosError) as caught:
        compile_schedule(source, anchor=ANCHOR)
    assert caught.value.reason == reason
    assert [v.field for v in caught.value.violations] == [field_path]


def test_field_prefix_is_used() -> None:
    with pytest.raises(KairosError) as caught:
        compile_schedule(
            pb.ScheduleSource(cron=pb.CronSpec(expression="nope")),
            anchor=ANCHOR,
            field_prefix="trigger.source.schedule",
        )
    assert caught.value.violations[0].field == "trigger.source.schedule.cron.expression"


def test_accepts_longest_allowed_expression() -> None:
    expression = "0 0 * * " + ",".join(["1"] * 124)  # 8 + 247 = 255 characters
    assert len(expression) <= 256
    assert cron(expression).next_fire_after(utc(2026, 1, 1)) == utc(2026, 1, 5)


# -------------------------------------------------------------------------------------------------- fuzz

_CRONISH = st.text(alphabet="0123456789*/-,?#LWHRMONJANSUFRIDECaly@ \t", max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    expression=st.one_of(st.text(max_size=300), _CRONISH),
    timezone=st.one_of(st.text(max_size=40), st.sampled_from(["", "UTC", NY, "Pacific/Apia", "Etc/GMT+5"])),
    jitter=st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1)),
)
def test_fuzz_only_kairos_errors(expression: str, timezone: str, jitter: tuple[int, int]) -> None:
    source = pb.ScheduleSource(
        cron=pb.CronSpec(expression=expression),
        timezone=timezone,
        jitter=Duration(seconds=jitter[0], nanos=jitter[1]),
    )
    try:
        schedule = compile_schedule(source, anchor=ANCHOR)
    except KairosError:
        return
    after = schedule.next_fire_after(ANCHOR)
    assert after is None or after > ANCHOR
    assert isinstance(schedule.description, str)


@settings(max_examples=200, deadline=None)
@given(
    which=st.sampled_from(["interval", "one_shot"]),
    numbers=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=4, max_size=4),
    nanos=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=3, max_size=3),
    start_now=st.booleans(),
)
def test_fuzz_times_only_kairos_errors(which: str, numbers: list[int], nanos: list[int], start_now: bool) -> None:
    if which == "interval":
        spec = pb.IntervalSpec(
            every=Duration(seconds=numbers[0], nanos=nanos[0]),
            start_time=Timestamp(seconds=numbers[1], nanos=nanos[1]),
            end_time=Timestamp(seconds=numbers[2], nanos=nanos[2]),
            start_now=start_now,
        )
        source = pb.ScheduleSource(interval=spec)
    else:
        source = pb.ScheduleSource(one_shot=pb.OneShotSpec(fire_time=Timestamp(seconds=numbers[3], nanos=nanos[0])))
    try:
        schedule = compile_schedule(source, anchor=ANCHOR)
    except KairosError:
        return
    found = schedule.next_fire_after(ANCHOR)
    assert found is None or found > ANCHOR
