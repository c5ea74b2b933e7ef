"""Per-webhook token buckets: a sender over its webhook's rate limit gets 429 with Retry-After."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from kairos.v1 import webhook_pb2


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """One token bucket per webhook: `rate_limit` of the webhook when set, else the service default."""

    def __init__(self, default_per_s: float, default_burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._default_per_s = default_per_s
        self._default_burst = default_burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def limits(self, rate_limit: webhook_pb2.RateLimit) -> tuple[float, int]:
        per_s = rate_limit.requests_per_second if rate_limit.requests_per_second > 0 else self._default_per_s
        burst = rate_limit.burst if rate_limit.burst > 0 else max(self._default_burst, math.ceil(per_s))
        return per_s, burst

    def acquire(self, webhook_id: str, rate_limit: webhook_pb2.RateLimit) -> int:
        """Takes one token; returns 0 when allowed, else the whole seconds to wait before a retry can pass."""
        return self.take(webhook_id, *self.limits(rate_limit))

    def take(self, webhook_id: str, per_s: float, burst: int) -> int:
        """`acquire` with the webhook's limits already worked out by `limits`."""
        now = self._clock()
        bucket = self._buckets.get(webhook_id)
        if bucket is None:
            bucket = self._buckets[webhook_id] = _Bucket(float(burst), now)
        else:
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * per_s)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / per_s))

    def forget(self, webhook_id: str) -> None:
        self._buckets.pop(webhook_id, None)
