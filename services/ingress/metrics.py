"""Prometheus metrics of the ingress, in a registry of its own (served on GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class IngressMetrics:
    """Requests by status, verification failures by reason, JetStream publish latency, deduplicated deliveries."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "kairos_ingress_requests", "Webhook requests answered, by HTTP status", ["status"], registry=self.registry
        )
        self._failures = Counter(
            "kairos_ingress_verification_failures",
            "Webhook requests refused for their credentials or signature, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "kairos_ingress_publish_seconds",
            "Time from publishing a fire to JetStream's acknowledgement",
            buckets=PUBLISH_BUCKETS,
            registry=self.registry,
        )
        self.deduplicated = Counter(
            "kairos_ingress_deduplicated", "Repeated deliveries answered without a new fire", registry=self.registry
        )
        self._by_status: dict[int, Counter] = {}
        self._by_reason: dict[str, Counter] = {}

    def answered(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._requests.labels(str(status))
        child.inc()

    def verification_failed(self, reason: str) -> None:
        child = self._by_reason.get(reason)
        if child is None:
            child = self._by_reason[reason] = self._failures.labels(reason)
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
