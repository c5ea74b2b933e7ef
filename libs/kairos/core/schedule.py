"""Compile a `ScheduleSource` into a `Schedule` that answers "when does this trigger fire next?".

Three forms are supported: cron expressions evaluated in the wall-clock time of an IANA time zone, fixed
intervals of real elapsed time, and one-shot instants. `compile_schedule` validates the source (raising only
`KairosError` with an INVALID_ARGUMENT reason and field path, whatever the input) and returns an immutable
`Schedule`; `Schedule.next_fire_after` / `Schedule.fires_between` then enumerate fire instants in UTC.

Cron and daylight saving time. Matching is done on naive local wall-clock times (croniter is only asked
about naive datetimes), and each matching wall time is then mapped to real instants by our own rule:

* hour field starting with `*` (`*`, `*/2`, `@hourly`): the schedule follows real time. A wall time inside
  a spring-forward gap never happens, so it does not fire; a wall time inside a fall-back overlap happens
  twice and fires twice.
* any other hour field: the schedule names a time of day and fires once per matching wall time. A wall time
  inside a gap fires at the end of the gap (the transition instant) under `DST_GAP_RULE_SHIFT` (default) or
  not at all under `DST_GAP_RULE_SKIP`; a wall time inside an overlap fires at its first occurrence
  (`DST_OVERLAP_RULE_FIRST`, default), its second (`LAST`) or both (`BOTH`).
* the same UTC instant is never returned twice (several gap times shifted to one instant fire once).

Offset transitions are found by sampling the zone's UTC offset once a day and bisecting each change to the
second (cached per zone and year). That is exact as long as a zone never changes its offset twice within 24
hours; in the IANA database the closest pair of offset changes is about seven days apart.
"""

from __future__ import annotations

import bisect
import calendar
import copy
import functools
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from cron_descriptor import ExpressionDescriptor, Options
from croniter import croniter

from kairos.core.errors import invalid_argument
from kairos.v1 import trigger_pb2

__all__ = ["MAX_CRON_EXPRESSION_LENGTH", "Schedule", "compile_schedule", "from_micros", "to_micros"]

MAX_CRON_EXPRESSION_LENGTH = 256

SHIFT = trigger_pb2.DST_GAP_RULE_SHIFT
SKIP = trigger_pb2.DST_GAP_RULE_SKIP
FIRST = trigger_pb2.DST_OVERLAP_RULE_FIRST
LAST = trigger_pb2.DST_OVERLAP_RULE_LAST
BOTH = trigger_pb2.DST_OVERLAP_RULE_BOTH

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_ONE_SECOND = timedelta(seconds=1)
_ONE_MICROSECOND = timedelta(microseconds=1)
_DAY_SECONDS = 86_400
# google.protobuf.Duration's documented range.
_MAX_DURATION_SECONDS = 315_576_000_000
# datetime's range, 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z, as Unix seconds.
_MIN_TIMESTAMP_SECONDS = -62_135_596_800
_MAX_TIMESTAMP_SECONDS = 253_402_300_799
_MIN_TIMESTAMP_US = _MIN_TIMESTAMP_SECONDS * 1_000_000
_MAX_TIMESTAMP_US = _MAX_TIMESTAMP_SECONDS * 1_000_000 + 999_999
# Safety valve for the cron search loop; each step crosses a transition or skips a whole overlap, so real
# schedules need a handful.
_MAX_SEARCH_STEPS = 10_000

# --------------------------------------------------------------------------------------------- cron parsing

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_ALLOWED_CHARS = re.compile(r"[ \t0-9A-Za-z*/,\-?#@]*", re.ASCII)
_ITEM = re.compile(r"(\*|[0-9A-Z]+)(?:-([0-9A-Z]+))?(?:/([0-9]{1,3}))?", re.ASCII)
_NTH = re.compile(r"([0-9A-Z]+)#([0-9]{1,3})", re.ASCII)
_NUMBER = re.compile(r"[0-9]{1,3}", re.ASCII)
_MONTH_NAMES = {
    name: i + 1
    for i, name in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))
}
_DOW_NAMES = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
# Longest each month can be (February in a leap year).
_MAX_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    lo: int
    hi: int  # largest value accepted
    star_hi: int  # largest value `*` stands for (day-of-week: 6, since 7 is another name for Sunday)
    names: dict[str, int] = field(default_factory=dict, compare=False)


_SECOND_F = _FieldSpec("second", 0, 59, 59)
_MINUTE_F = _FieldSpec("minute", 0, 59, 59)
_HOUR_F = _FieldSpec("hour", 0, 23, 23)
_DOM_F = _FieldSpec("day-of-month", 1, 31, 31)
_MONTH_F = _FieldSpec("month", 1, 12, 12, _MONTH_NAMES)
_DOW_F = _FieldSpec("day-of-week", 0, 7, 6, _DOW_NAMES)


class _CronSyntaxError(Exception):
    """Internal: a human-readable reason the expression is rejected."""


@dataclass(frozen=True)
class _Field:
    values: frozenset[int]
    restricted: bool  # False for `*` (and `?`); drives the day-of-month / day-of-week OR rule
    last_day: bool = False  # `L` in day-of-month
    nth: tuple[int, int] | None = None  # `weekday#n` in day-of-week


def _value(token: str, spec: _FieldSpec) -> int:
    if _NUMBER.fullmatch(token):
        number = int(token)
    elif token in spec.names:
        number = spec.names[token]
    else:
        raise _CronSyntaxError(f"{spec.name} value {token!r} is not a number or a known name")
    if not spec.lo <= number <= spec.hi:
        raise _CronSyntaxError(f"{spec.name} value {number} is outside {spec.lo}-{spec.hi}")
    return number


def _parse_field(text: str, spec: _FieldSpec) -> _Field:
    full = frozenset(range(spec.lo, spec.star_hi + 1))
    if text == "*" or (text == "?" and spec in (_DOM_F, _DOW_F)):
        return _Field(full, restricted=False)
    if spec is _DOW_F and "#" in text:
        match = _NTH.fullmatch(text)
        if not match:
            raise _CronSyntaxError("day-of-week `#` must be a single item such as MON#2")
        weekday = _value(match.group(1), spec) % 7
        nth = int(match.group(2))
        if not 1 <= nth <= 5:
            raise _CronSyntaxError(f"day-of-week occurrence #{nth} is outside 1-5")
        return _Field(frozenset({weekday}), restricted=True, nth=(weekday, nth))
    values: set[int] = set()
    last_day = False
    for item in text.split(","):
        if spec is _DOM_F and item == "L":
            last_day = True
            continue
        match = _ITEM.fullmatch(item)
        if not match:
            raise _CronSyntaxError(f"{spec.name} item {item!r} is not supported")
        base, end, step_text = match.groups()
        step = 1 if step_text is None else int(step_text)
        if not 1 <= step <= spec.hi - spec.lo + 1:
            raise _CronSyntaxError(f"{spec.name} step {step} is outside 1-{spec.hi - spec.lo + 1}")
        if base == "*":
            if end is not None:
                raise _CronSyntaxError(f"{spec.name} item {item!r} is not supported")
            lo, hi = spec.lo, spec.star_hi
        elif end is not None:
            lo, hi = _value(base, spec), _value(end, spec)
            if lo > hi:
                raise _CronSyntaxError(f"{spec.name} range {item!r} runs backwards")
        else:
            lo = _value(base, spec)
            hi = spec.hi if step_text is not None else lo  # `a/n` means a, a+n, ... up to the field max
        values.update(range(lo, hi + 1, step))
    if spec is _DOW_F:
        values = {v % 7 for v in values}
    return _Field(frozenset(values), restricted=True, last_day=last_day)


def _engine_text(parsed: _Field) -> str:
    """The field as croniter should read it: `*` or an explicit list (croniter widens `5-5` to `*`)."""
    if not parsed.restricted:
        return "*"
    if parsed.nth is not None:
        return f"{parsed.nth[0]}#{parsed.nth[1]}"
    items = [str(v) for v in sorted(parsed.values)]
    if parsed.last_day:
        items.append("L")
    return ",".join(items)


@dataclass(frozen=True)
class _CronRule:
    """A parsed cron expression. Immutable and shared between schedules (cached by expression text)."""

    canonical: str
    with_seconds: bool
    hour_wildcard: bool
    engine: croniter = field(compare=False, hash=False, repr=False)

    def at_or_after(self, local: int) -> int | None:
        """First matching naive wall time at or after `local` (both as seconds since 1970-01-01T00:00)."""
        engine = copy.copy(self.engine)  # croniter is stateful; the prototype is shared between threads
        try:
            found = engine.get_next(datetime, start_time=_naive(local - 1))
        except (ValueError, OverflowError, OSError):  # CroniterBadDateError is a ValueError
            return None
        return (found - _NAIVE_EPOCH) // _ONE_SECOND


@functools.lru_cache(maxsize=8192)
def _parse_cron(expression: str) -> _CronRule | str:
    """The compiled expression, or a description of what is wrong with it (cached either way)."""
    try:
        return _compile_cron(expression)
    except _CronSyntaxError as exc:
        return str(exc)


def _compile_cron(expression: str) -> _CronRule:
    if len(expression) > MAX_CRON_EXPRESSION_LENGTH:
        raise _CronSyntaxError(f"longer than {MAX_CRON_EXPRESSION_LENGTH} characters")
    if not _ALLOWED_CHARS.fullmatch(expression):
        raise _CronSyntaxError("contains characters that are not allowed in a cron expression")
    text = expression.strip(" \t")
    if not text:
        raise _CronSyntaxError("is empty")
    if text.startswith("@"):
        macro = _MACROS.get(text.lower())
        if macro is None:
            raise _CronSyntaxError(f"unknown macro {text!r}; use one of {', '.join(_MACROS)}")
        text = macro
    tokens = text.upper().split()
    if len(tokens) == 5:
        specs = (_MINUTE_F, _HOUR_F, _DOM_F, _MONTH_F, _DOW_F)
    elif len(tokens) == 6:
        specs = (_SECOND_F, _MINUTE_F, _HOUR_F, _DOM_F, _MONTH_F, _DOW_F)
    else:
        raise _CronSyntaxError(
            f"has {len(tokens)} fields; expected 5 (minute hour day-of-month month day-of-week), "
            "6 (second first) or a macro such as @daily"
        )
    parsed = [_parse_field(token, spec) for token, spec in zip(tokens, specs, strict=True)]
    dom, month, dow = parsed[-3], parsed[-2], parsed[-1]
    if dom.last_day and dow.restricted:
        raise _CronSyntaxError("`L` in day-of-month cannot be combined with a day-of-week restriction")
    if dow.nth is not None and dom.restricted:
        raise _CronSyntaxError("`#` in day-of-week cannot be combined with a day-of-month restriction")
    if (
        dom.restricted
        and not dow.restricted
        and not dom.last_day
        and not any(day <= _MAX_DAYS[m] for day in dom.values for m in month.values)
    ):
        raise _CronSyntaxError("never fires: no selected month has the selected day of the month")
    with_seconds = len(tokens) == 6
    try:
        engine = croniter(
            " ".join(_engine_text(p) for p in parsed),
            datetime(2000, 1, 1),
            ret_type=datetime,
            second_at_beginning=with_seconds,
        )
    except Exception as exc:  # pragma: no cover - the grammar above only lets through what croniter reads
        raise _CronSyntaxError("is not supported") from exc
    return _CronRule(
        canonical=" ".join(tokens),
        with_seconds=with_seconds,
        hour_wildcard=tokens[-4].startswith("*"),
        engine=engine,
    )


@functools.lru_cache(maxsize=4096)
def _describe_cron(canonical: str) -> str:
    try:
        options = Options(locale_code="en_US", use_24hour_time_format=False)
        return ExpressionDescriptor(canonical, options).get_description()
    except Exception:  # a description is a nicety; never let it break a schedule
        return canonical


# ----------------------------------------------------------------------------------- time zone transitions

_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*", re.ASCII)


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    if len(name) > 255 or not _ZONE_NAME.fullmatch(name):
        return None
    try:
        return ZoneInfo(name)
    except Exception:
        return None


def _seconds(delta: timedelta | None) -> int:
    assert delta is not None
    return delta.days * _DAY_SECONDS + delta.seconds


def _offset_at(zone: ZoneInfo, instant: int) -> int:
    """UTC offset in seconds in effect at Unix second `instant`."""
    return _seconds(datetime.fromtimestamp(instant, zone).utcoffset())


def _naive(local: int) -> datetime:
    return _NAIVE_EPOCH + timedelta(seconds=local)


def _year_start(year: int) -> int:
    return calendar.timegm((year, 1, 1, 0, 0, 0))


@functools.lru_cache(maxsize=8192)
def _year_transitions(key: str, year: int) -> tuple[tuple[int, int, int], ...]:
    """Offset changes `(instant, offset_before, offset_after)` with instant in the UTC year `year`.

    An instant T is a transition when the offset at T differs from the offset at T - 1 s.
    """
    zone = ZoneInfo(key)
    start, end = _year_start(year), _year_start(year + 1)
    found: list[tuple[int, int, int]] = []
    t = start - 1
    offset = _offset_at(zone, t)
    while t < end - 1:
        probe = min(t + _DAY_SECONDS, end - 1)
        probe_offset = _offset_at(zone, probe)
        if probe_offset != offset:
            lo, hi = t, probe  # offset(lo) == offset, offset(hi) == probe_offset
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_at(zone, mid) == offset:
                    lo = mid
                else:
                    hi = mid
            found.append((hi, offset, probe_offset))
        t, offset = probe, probe_offset
    return tuple(found)


def _first_transition(key: str, after: int, until: int) -> tuple[int, int, int] | None:
    """The first transition T with after < T <= until."""
    year = time.gmtime(after).tm_year
    while _year_start(year) <= until:
        transitions = _year_transitions(key, year)
        i = bisect.bisect_right(transitions, after, key=lambda tr: tr[0])
        if i < len(transitions):
            return transitions[i] if transitions[i][0] <= until else None
        year += 1
    return None


def _last_transition(key: str, at: int) -> tuple[int, int, int] | None:
    """The last transition T <= at, looking back at most into the previous year."""
    year = time.gmtime(at).tm_year
    for y in (year, year - 1):
        transitions = _year_transitions(key, y)
        i = bisect.bisect_right(transitions, at, key=lambda tr: tr[0])
        if i > 0:
            return transitions[i - 1]
    return None


def _fold(zone: ZoneInfo, local: int, offset: int) -> int | None:
    """For a wall time that really occurs with `offset`: None if it occurs once, else which occurrence."""
    naive = _naive(local)
    first = _seconds(naive.replace(tzinfo=zone).utcoffset())
    second = _seconds(naive.replace(tzinfo=zone, fold=1).utcoffset())
    if first == second:
        return None
    return 0 if offset == first else 1


# ------------------------------------------------------------------------------------------------ schedule


@dataclass(frozen=True)
class _CronPlan:
    rule: _CronRule


@dataclass(frozen=True)
class _IntervalPlan:
    every_us: int
    start_us: int
    end_us: int | None
    start_now: bool
    anchor_us: int
    start_time_set: bool


@dataclass(frozen=True)
class _OneShotPlan:
    fire_us: int


def to_micros(instant: datetime, name: str = "instant") -> int:
    """Unix microseconds of a timezone-aware datetime; a naive one is a ValueError that names `name`."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return (instant - _EPOCH) // _ONE_MICROSECOND


def from_micros(us: int) -> datetime:
    """The UTC datetime of Unix microseconds `us`; OverflowError beyond datetime's range."""
    return _EPOCH + timedelta(microseconds=us)


def _expressible(us: int) -> bool:
    """Whether Unix microseconds `us` are within datetime's range."""
    return _MIN_TIMESTAMP_US <= us <= _MAX_TIMESTAMP_US


def _humanize_seconds(total: int) -> str:
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if total % size == 0:
            count = total // size
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Schedule:
    """A compiled, immutable schedule. All instants in and out are aware datetimes; outputs are in UTC."""

    kind: Literal["cron", "interval", "one_shot"]
    timezone: str  # the IANA name as given, "UTC" when the source left it empty
    zone: ZoneInfo
    canonical_expression: str  # "" unless kind == "cron"
    jitter: timedelta
    dst_gap_rule: int  # trigger_pb2.DstGapRule, never UNSPECIFIED
    dst_overlap_rule: int  # trigger_pb2.DstOverlapRule, never UNSPECIFIED
    plan: _CronPlan | _IntervalPlan | _OneShotPlan = field(repr=False)
    serialized_source: bytes = field(repr=False, compare=False)  # the input as given, for to_proto

    # ---------------------------------------------------------------------------------------- describing

    @property
    def cron_description(self) -> str:
        """cron-descriptor's text for the expression (no zone), e.g. "At 09:00 AM"; "" for other kinds."""
        return _describe_cron(self.canonical_expression) if isinstance(self.plan, _CronPlan) else ""

    @property
    def description(self) -> str:
        """Human text including the zone, e.g. "Every 5 minutes (UTC)"."""
        plan = self.plan
        if isinstance(plan, _CronPlan):
            text = self.cron_description
        elif isinstance(plan, _IntervalPlan):
            text = _humanize_seconds(plan.every_us // 1_000_000)
            if plan.start_time_set:
                text += f" from {self._local_micros(plan.start_us)}"
            if plan.end_us is not None:
                text += f" until {self._local_micros(plan.end_us)}"
            text = f"Now, then {text}" if plan.start_now else text[0].upper() + text[1:]
        else:
            text = f"Once at {self._local_micros(plan.fire_us)}"
        return f"{text} ({self.timezone})"

    def describe(self) -> str:
        """Same as `description`: the human text followed by the zone name in parentheses."""
        return self.description

    def local_time(self, instant: datetime) -> str:
        """ISO 8601 text of `instant` in the schedule's zone, with its offset."""
        to_micros(instant)
        return instant.astimezone(self.zone).isoformat()

    def _local_micros(self, us: int) -> str:
        return from_micros(us).astimezone(self.zone).isoformat() if _expressible(us) else "(out of range)"

    def to_proto(self) -> trigger_pb2.ScheduleSource:
        """The source as compiled, with the cron output-only fields filled in."""
        message = trigger_pb2.ScheduleSource.FromString(self.serialized_source)
        if isinstance(self.plan, _CronPlan):
            message.cron.canonical_expression = self.canonical_expression
            message.cron.description = self.cron_description
        return message

    # ----------------------------------------------------------------------------------------- firing

    def next_fire_after(self, after: datetime) -> datetime | None:
        """The first fire instant strictly after `after` (UTC), or None when the schedule is done."""
        found = self.next_fire_after_us(to_micros(after, "after"))
        return None if found is None else from_micros(found)

    def next_fire_after_us(self, after_us: int) -> int | None:
        """`next_fire_after` in Unix microseconds, for callers that keep time as integers (the scheduler)."""
        plan = self.plan
        if isinstance(plan, _OneShotPlan):
            return plan.fire_us if plan.fire_us > after_us else None
        if isinstance(plan, _IntervalPlan):
            return self._interval_next(plan, after_us)
        try:
            found = self._cron_next(plan.rule, after_us // 1_000_000)
            if found is None or not _MIN_TIMESTAMP_SECONDS <= found <= _MAX_TIMESTAMP_SECONDS:
                return None
            return found * 1_000_000
        except (OverflowError, ValueError, OSError):  # beyond what datetime / the zone database can express
            return None

    def fires_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Fire instants t with start < t <= end, ascending."""
        to_micros(end, "end")
        current = self.next_fire_after(start)
        while current is not None and current <= end:
            yield current
            current = self.next_fire_after(current)

    def jitter_for(self, fire_instant: datetime, trigger_name: str) -> timedelta:
        """Deterministic delay in [0, jitter), and strictly less than the gap to the next fire."""
        return timedelta(microseconds=self.jitter_us(to_micros(fire_instant, "fire_instant"), trigger_name))

    def jitter_us(self, fire_us: int, trigger_name: str) -> int:
        """`jitter_for` in microseconds, for a fire instant in Unix microseconds."""
        bound = self.jitter // _ONE_MICROSECOND
        if bound <= 0:
            return 0
        following = self.next_fire_after_us(fire_us)
        if following is not None:
            bound = min(bound, following - fire_us)
        if bound <= 0:
            return 0
        seed = f"{trigger_name}\x00{fire_us}".encode("utf-8", "surrogatepass")
        value = int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest(), "big")
        return value % bound

    @staticmethod
    def _interval_next(plan: _IntervalPlan, after_us: int) -> int | None:
        floor_us = after_us
        candidate: int | None = None
        if plan.start_now:
            if plan.anchor_us > after_us:
                candidate = plan.anchor_us
            floor_us = max(floor_us, plan.anchor_us)  # periodic fires count only after the immediate one
        if candidate is None:
            if floor_us < plan.start_us:
                candidate = plan.start_us
            else:
                candidate = plan.start_us + ((floor_us - plan.start_us) // plan.every_us + 1) * plan.every_us
        if plan.end_us is not None and candidate >= plan.end_us:
            return None
        return candidate if _expressible(candidate) else None

    def _cron_next(self, rule: _CronRule, after: int) -> int | None:
        """First fire instant (Unix seconds) strictly after Unix second `after`.

        Walks forward through stretches of constant UTC offset. Within a stretch, instants and wall times
        are in the same order, so the first matching wall time gives the first instant; crossing a
        transition may add a shifted gap fire at the transition itself.
        """
        zone, key = self.zone, self.zone.key
        shift_gaps = not rule.hour_wildcard and self.dst_gap_rule == SHIFT
        keep_first = rule.hour_wildcard or self.dst_overlap_rule in (FIRST, BOTH)
        keep_second = rule.hour_wildcard or self.dst_overlap_rule in (LAST, BOTH)

        def gap_fires(before: int, after_offset: int, at: int) -> bool:
            if not shift_gaps or after_offset <= before:
                return False
            local = rule.at_or_after(at + before)
            return local is not None and local < at + after_offset

        start = after + 1  # search instants >= start
        offset = _offset_at(zone, start)
        if gap_fires(_offset_at(zone, start - 1), offset, start):
            return start
        for _ in range(_MAX_SEARCH_STEPS):
            local = rule.at_or_after(start + offset)
            if local is None:
                return None
            candidate = local - offset
            transition = _first_transition(key, start, candidate)
            if transition is not None:  # the stretch ends before the candidate: continue after it
                at, before, after_offset = transition
                if gap_fires(before, after_offset, at):
                    return at
                start, offset = at, after_offset
                continue
            occurrence = _fold(zone, local, offset)
            if occurrence is None or (occurrence == 0 and keep_first) or (occurrence == 1 and keep_second):
                return candidate
            if occurrence == 0:  # only the second occurrence counts: resume at the transition
                transition = _first_transition(key, candidate, candidate + 2 * _DAY_SECONDS)
                if transition is None:  # pragma: no cover - an overlap always ends in a transition
                    return candidate
                start, offset = transition[0], transition[2]
            else:  # only the first occurrence counts: resume where the repeated wall times end
                transition = _last_transition(key, candidate)
                if transition is None:  # pragma: no cover
                    return candidate
                start = transition[0] + (transition[1] - transition[2])
        return None  # pragma: no cover


# ------------------------------------------------------------------------------------------------ compiling


def _duration_micros(duration: object) -> int | None:
    """Microseconds of a well-formed google.protobuf.Duration, None when malformed."""
    seconds, nanos = duration.seconds, duration.nanos  # type: ignore[attr-defined]
    if abs(seconds) > _MAX_DURATION_SECONDS or abs(nanos) > 999_999_999:
        return None
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        return None
    return seconds * 1_000_000 + int(nanos / 1000)


def _timestamp_micros(timestamp: object) -> int | None:
    """Microseconds of a google.protobuf.Timestamp within datetime's range, None otherwise."""
    seconds, nanos = timestamp.seconds, timestamp.nanos  # type: ignore[attr-defined]
    if not _MIN_TIMESTAMP_SECONDS <= seconds <= _MAX_TIMESTAMP_SECONDS or not 0 <= nanos <= 999_999_999:
        return None
    return seconds * 1_000_000 + nanos // 1000


def compile_schedule(
    source: trigger_pb2.ScheduleSource, *, anchor: datetime, field_prefix: str = "schedule"
) -> Schedule:
    """Validate `source` and compile it. `anchor` is the creation instant (interval default start).

    Raises `KairosError` (INVALID_ARGUMENT, naming the field under `field_prefix`) for any invalid source.
    """
    anchor_us = to_micros(anchor, "anchor")
    p = field_prefix
    kind = source.WhichOneof("spec")
    if kind is None:
        raise invalid_argument("MISSING_SCHEDULE", p, "set one of cron, interval or one_shot")

    canonical = ""
    plan: _CronPlan | _IntervalPlan | _OneShotPlan
    if kind == "cron":
        rule = _parse_cron(source.cron.expression)
        if isinstance(rule, str):
            raise invalid_argument("INVALID_CRON_EXPRESSION", f"{p}.cron.expression", f"cron expression {rule}")
        canonical = rule.canonical
        plan = _CronPlan(rule)
    elif kind == "interval":
        plan = _compile_interval(source.interval, anchor_us, f"{p}.interval")
    else:
        fire_us = _timestamp_micros(source.one_shot.fire_time)
        if not source.one_shot.HasField("fire_time") or fire_us is None:
            raise invalid_argument(
                "INVALID_TIME_RANGE", f"{p}.one_shot.fire_time", "fire_time is required, in years 1-9999"
            )
        plan = _OneShotPlan(fire_us)

    zone = _zone(source.timezone or "UTC")
    if zone is None:
        raise invalid_argument(
            "UNKNOWN_TIME_ZONE", f"{p}.timezone", "not a known IANA time zone name such as America/New_York"
        )

    jitter_us = _duration_micros(source.jitter)
    if jitter_us is None or source.jitter.seconds < 0 or source.jitter.nanos < 0:
        raise invalid_argument("INVALID_JITTER", f"{p}.jitter", "must be a valid, non-negative duration")

    gap_rule = source.dst_gap_rule or SHIFT
    if gap_rule not in (SHIFT, SKIP):
        raise invalid_argument("INVALID_DST_RULE", f"{p}.dst_gap_rule", f"unknown DstGapRule {gap_rule}")
    overlap_rule = source.dst_overlap_rule or FIRST
    if overlap_rule not in (FIRST, LAST, BOTH):
        raise invalid_argument("INVALID_DST_RULE", f"{p}.dst_overlap_rule", f"unknown DstOverlapRule {overlap_rule}")

    return Schedule(
        kind=kind,
        timezone=source.timezone or "UTC",
        zone=zone,
        canonical_expression=canonical,
        jitter=timedelta(microseconds=jitter_us),
        dst_gap_rule=gap_rule,
        dst_overlap_rule=overlap_rule,
        plan=plan,
        serialized_source=source.SerializeToString(deterministic=True),
    )


def _compile_interval(spec: trigger_pb2.IntervalSpec, anchor_us: int, p: str) -> _IntervalPlan:
    every_us = _duration_micros(spec.every)
    if every_us is None or every_us < 1_000_000 or every_us % 1_000_000:
        raise invalid_argument("INVALID_INTERVAL", f"{p}.every", "must be a whole number of seconds, at least 1")
    start_us = anchor_us
    if spec.HasField("start_time"):
        parsed = _timestamp_micros(spec.start_time)
        if parsed is None:
            raise invalid_argument("INVALID_TIME_RANGE", f"{p}.start_time", "must be in years 1-9999")
        start_us = parsed
    end_us: int | None = None
    if spec.HasField("end_time"):
        end_us = _timestamp_micros(spec.end_time)
        if end_us is None:
            raise invalid_argument("INVALID_TIME_RANGE", f"{p}.end_time", "must be in years 1-9999")
        if end_us <= start_us:
            raise invalid_argument(
                "INVALID_TIME_RANGE", f"{p}.end_time", "must be after start_time (or the creation time)"
            )
    return _IntervalPlan(
        every_us=every_us,
        start_us=start_us,
        end_us=end_us,
        start_now=spec.start_now,
        anchor_us=anchor_us,
        start_time_set=spec.HasField("start_time"),
    )
