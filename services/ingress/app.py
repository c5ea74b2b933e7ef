"""Composition root of the ingress: change-feed mirrors, the webhook HTTP server and EventService."""

from __future__ import annotations

from contextlib import AsyncExitStack

from kairos.core import messaging
from kairos.core.feed import KvMirror
from kairos.core.jetstream import JetStreamPublisher
from kairos.core.runtime import Runtime
from kairos.core.sealing import Sealer
from kairos.ingress.endpoint import (
    PUBLISH_ATTEMPTS,
    PUBLISH_TIMEOUT_S,
    TriggerIndex,
    WebhookEndpoint,
    WebhookViews,
    build_app,
)
from kairos.ingress.events import EventConsumer, EventFirer, EventServicer, EventTriggers, EventTypeCatalog
from kairos.ingress.httpserver import start_http
from kairos.ingress.limits import RateLimiter
from kairos.ingress.metrics import IngressMetrics
from kairos.ingress.signatures import SigningKeys
from kairos.v1 import event_service_pb2_grpc, feed_pb2, trigger_pb2


async def start(stack: AsyncExitStack, runtime: Runtime) -> None:
    config = runtime.config
    sealer = Sealer(config.secret_key) if config.secret_key else None
    signing_keys = SigningKeys(sealer)
    limiter = RateLimiter(config.webhook_rate_per_s, config.webhook_burst)
    trigger_index = TriggerIndex()
    views = WebhookViews(limiter)
    event_triggers = EventTriggers()

    def webhook_changed(key: str, _value) -> None:
        signing_keys.forget(key)
        limiter.forget(key)
        views.forget(key)

    def trigger_changed(key: str, value) -> None:
        trigger_index.on_change(key, value)
        event_triggers.on_change(key, value)

    webhooks: KvMirror[feed_pb2.WebhookRecord] = KvMirror(
        runtime.buckets.webhooks, feed_pb2.WebhookRecord, on_change=webhook_changed
    )
    triggers: KvMirror[trigger_pb2.Trigger] = KvMirror(
        runtime.buckets.triggers, trigger_pb2.Trigger, on_change=trigger_changed
    )
    catalog = EventTypeCatalog(
        await messaging.ensure_key_value(runtime.js, messaging.EVENT_TYPES_BUCKET, replicas=config.nats_replicas)
    )
    for mirror in (webhooks, triggers, catalog.mirror):
        await mirror.start()
        stack.push_async_callback(mirror.stop)

    runtime.extras["ingress.webhooks"] = webhooks
    runtime.extras["ingress.triggers"] = triggers
    publisher = JetStreamPublisher(runtime.nats, timeout=PUBLISH_TIMEOUT_S, attempts=PUBLISH_ATTEMPTS)
    await publisher.start()
    stack.push_async_callback(publisher.close)
    metrics = IngressMetrics()
    endpoint = WebhookEndpoint(
        runtime.nats,
        publisher,
        webhooks,
        triggers,
        signing_keys=signing_keys,
        limiter=limiter,
        metrics=metrics,
        trigger_index=trigger_index,
        views=views,
        tolerance_s=config.webhook_tolerance_s,
    )
    app = build_app(endpoint, metrics, lambda: runtime.nats.is_connected and publisher.is_connected)
    port = await start_http(
        stack, app, config.http_host, config.http_port, config.http_request_timeout_s, on_refused=metrics.answered
    )
    base = config.public_url or f"http://{config.http_host}:{port}"
    runtime.endpoints["webhooks"] = f"{base}/hooks/"

    firer = EventFirer(runtime.js, event_triggers, catalog)
    consumer = EventConsumer(runtime.js, firer)
    await consumer.start()
    stack.push_async_callback(consumer.stop)
    event_service_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(firer), runtime.grpc.server)
    runtime.grpc.add("kairos.v1.EventService")
