"""The ingress's plain-int metrics as Prometheus reads them."""

from prometheus_client.parser import text_string_to_metric_families

from kairos.ingress.metrics import PUBLISH_BUCKETS, IngressMetrics


def samples(metrics: IngressMetrics) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
    }


def test_counts_by_label_and_publish_latency_buckets() -> None:
    metrics = IngressMetrics()
    for status in (202, 202, 401, 429):
        metrics.answered(status)
    metrics.verification_failed("invalid_signature")
    metrics.repeated_delivery()
    latencies = (PUBLISH_BUCKETS[0], PUBLISH_BUCKETS[0] * 1.01, 60.0)  # on a bound, just over it, past the last
    for seconds in latencies:
        metrics.published(seconds)
    found = samples(metrics)
    assert found[("kairos_ingress_requests_total", (("status", "202"),))] == 2
    assert found[("kairos_ingress_requests_total", (("status", "429"),))] == 1
    assert found[("kairos_ingress_verification_failures_total", (("reason", "invalid_signature"),))] == 1
    assert found[("kairos_ingress_deduplicated_total", ())] == 1
    bucket = "kairos_ingress_publish_seconds_bucket"
    assert found[(bucket, (("le", "0.0005"),))] == 1
    assert found[(bucket, (("le", "0.001"),))] == 2
    assert found[(bucket, (("le", "5.0"),))] == 2
    assert found[(bucket, (("le", "+Inf"),))] == 3
    assert found[("kairos_ingress_publish_seconds_count", ())] == 3
    assert found[("kairos_ingress_publish_seconds_sum", ())] == sum(latencies)
