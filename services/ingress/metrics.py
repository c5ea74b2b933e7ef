"""Prometheus metrics of the ingress (served on GET /metrics): requests by status, verification failures by
reason, JetStream publish latency, repeated deliveries.

The request path only adds to plain ints: the ingress is one event loop, and prometheus_client's metric objects
take a lock on every update. The counts become Prometheus metric families when /metrics is scraped."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class IngressMetrics:
    def __init__(self) -> None:
        self._by_status: Counter[int] = Counter()
        self._failures: Counter[str] = Counter()
        self._repeated = 0
        # one count per bucket of PUBLISH_BUCKETS, the last for slower publishes
        self._publish_counts = [0] * (len(PUBLISH_BUCKETS) + 1)
        self._publish_sum = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def answered(self, status: int) -> None:
        self._by_status[status] += 1

    def verification_failed(self, reason: str) -> None:
        self._failures[reason] += 1

    def repeated_delivery(self) -> None:
        self._repeated += 1

    def published(self, seconds: float) -> None:
        self._publish_counts[bisect.bisect_left(PUBLISH_BUCKETS, seconds)] += 1
        self._publish_sum += seconds

    def collect(self) -> Iterator[Metric]:
        """The metric families, as prometheus_client's registry asks a custom collector for them."""
        requests = CounterMetricFamily(
            "kairos_ingress_requests", "Webhook requests answered, by HTTP status", labels=["status"]
        )
        for status, count in sorted(self._by_status.items()):
            requests.add_metric([str(status)], count)
        failures = CounterMetricFamily(
            "kairos_ingress_verification_failures",
            "Webhook requests refused for their credentials or signature, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(self._failures.items()):
            failures.add_metric([reason], count)
        cumulative, buckets = 0, []
        for bound, count in zip((*PUBLISH_BUCKETS, float("inf")), self._publish_counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield requests
        yield failures
        yield HistogramMetricFamily(
            "kairos_ingress_publish_seconds",
            "Time from publishing a fire to JetStream's acknowledgement",
            buckets=buckets,
            sum_value=self._publish_sum,
        )
        yield CounterMetricFamily(
            "kairos_ingress_deduplicated", "Repeated deliveries answered without a new fire", value=self._repeated
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
