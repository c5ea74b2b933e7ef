"""The trigger policies the executor enforces, as pure functions: retry backoff, overlap default, daily window."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kairos.v1 import fire_pb2, run_pb2, trigger_pb2

DEFAULT_INITIAL_BACKOFF_S = 1.0
DEFAULT_MAX_BACKOFF_S = 60.0
DEFAULT_MULTIPLIER = 2.0
Overlap = trigger_pb2.OverlapPolicy


def max_attempts(policies: trigger_pb2.Policies) -> int:
    return max(1, policies.retry.max_attempts)


def backoff_s(retry: trigger_pb2.RetryPolicy, failed_attempt: int, rng: random.Random | None = None) -> float:
    """Delay before the attempt after `failed_attempt` (1-based): exponential, capped, with jitter in
    [half, full] of the exponential value so replicas retrying together spread out."""
    initial = retry.initial_backoff.ToTimedelta().total_seconds() or DEFAULT_INITIAL_BACKOFF_S
    ceiling = retry.max_backoff.ToTimedelta().total_seconds() or DEFAULT_MAX_BACKOFF_S
    multiplier = retry.backoff_multiplier if retry.backoff_multiplier >= 1 else DEFAULT_MULTIPLIER
    exponential = min(ceiling, initial * multiplier ** max(0, failed_attempt - 1))
    return exponential * (0.5 + 0.5 * (rng or random).random())


def overlap_policy(fire: fire_pb2.FireRequest) -> int:
    """The trigger's overlap policy; unspecified means SKIP for schedules and ALLOW for everything else."""
    if fire.policies.overlap != Overlap.OVERLAP_POLICY_UNSPECIFIED:
        return fire.policies.overlap
    if fire.trigger_type == run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE:
        return Overlap.OVERLAP_POLICY_SKIP
    return Overlap.OVERLAP_POLICY_ALLOW


def local_day(instant: datetime, timezone: str) -> tuple[datetime, datetime]:
    """The UTC bounds [start, end) of the calendar day containing `instant` in `timezone` (UTC if unknown)."""
    try:
        zone = ZoneInfo(timezone) if timezone else UTC
    except (ZoneInfoNotFoundError, ValueError):
        zone = UTC
    day = instant.astimezone(zone).date()
    start = datetime.combine(day, time(), zone)
    end = datetime.combine(day + timedelta(days=1), time(), zone)
    return start.astimezone(UTC), end.astimezone(UTC)
