"""Composition root of the ingress: change-feed mirrors, the webhook HTTP server and EventService."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from contextlib import AsyncExitStack

import structlog
import uvicorn

from kairos.core import messaging
from kairos.core.config import DEFAULT_HTTP_REQUEST_TIMEOUT_S
from kairos.core.feed import KvMirror
from kairos.core.jetstream import JetStreamPublisher
from kairos.core.runtime import Runtime
from kairos.core.sealing import Sealer
from kairos.core.tasks import spawn
from kairos.ingress.endpoint import (
    PUBLISH_ATTEMPTS,
    PUBLISH_TIMEOUT_S,
    TriggerIndex,
    WebhookEndpoint,
    WebhookViews,
    build_app,
)
from kairos.ingress.events import EventConsumer, EventFirer, EventServicer, EventTypeCatalog
from kairos.ingress.limits import RateLimiter
from kairos.ingress.metrics import IngressMetrics
from kairos.ingress.signatures import SigningKeys
from kairos.v1 import event_service_pb2_grpc, feed_pb2, trigger_pb2

log = structlog.get_logger(__name__)


REQUEST_TIMEOUT = (
    b"408 Request Timeout",
    b'{"error":"request_timeout","message":"the request did not arrive whole in time"}',
)
STOPPING = (b"503 Service Unavailable", b'{"error":"unavailable","message":"the server is stopping; retry"}')
# On stop, requests in progress get this long to be answered (an accepted one waits for its ack, at most
# PUBLISH_TIMEOUT_S * PUBLISH_ATTEMPTS); uvicorn's default would wait for every connection without end.
GRACEFUL_STOP_S = 2 * PUBLISH_TIMEOUT_S * PUBLISH_ATTEMPTS


def _waiting_on_client(connection) -> bool:
    """Whether a uvicorn connection waits for its client to send (the rest of) a request: it neither idles between
    requests (uvicorn's keep-alive timer runs) nor holds a request that has arrived whole (the app's turn)."""
    if connection.timeout_keep_alive_task is not None:
        return False
    cycle = connection.cycle
    return cycle is None or cycle.response_complete or cycle.more_body


def _refuse_unfinished(connection, answer: tuple[bytes, bytes]) -> None:
    """Answers a connection whose request has not arrived whole (unless an answer has begun on it) and closes it."""
    cycle = connection.cycle
    if cycle is None or not cycle.response_started or cycle.response_complete:
        status, body = answer
        connection.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, len(body), body)
        )
    connection.transport.close()


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: signals belong to the process runtime, not to uvicorn. Once a second it
    also answers 408 and closes each connection whose client has taken over `request_timeout_s` to send a
    whole request (Slowloris): uvicorn's keep-alive timeout covers only the time between two requests, and
    restarts on every byte received. On stop, a client still sending its request gets 503 at once."""

    def __init__(self, config: uvicorn.Config, request_timeout_s: float) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self._request_timeout_s = request_timeout_s
        self._waiting: dict[object, tuple[object, float]] = {}  # connection -> (its request cycle, waiting since)

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # uvicorn ticks every 0.1 s
            self._time_out_slow_clients(time.monotonic())
        return await super().on_tick(counter)

    def _time_out_slow_clients(self, now: float) -> None:
        """Refuses each connection that has waited for its client, within the same request, for too long."""
        waiting, closed = {}, 0
        for connection in self.server_state.connections:
            if not _waiting_on_client(connection):
                continue
            cycle = connection.cycle
            seen = self._waiting.get(connection)
            since = seen[1] if seen is not None and seen[0] is cycle else now
            if now - since < self._request_timeout_s:
                waiting[connection] = (cycle, since)
            else:
                _refuse_unfinished(connection, REQUEST_TIMEOUT)
                closed += 1
        self._waiting = waiting
        if closed:
            log.info("closed connections too slow to send a request", count=closed, timeout_s=self._request_timeout_s)

    async def shutdown(self, sockets=None) -> None:
        for connection in list(self.server_state.connections):
            if _waiting_on_client(connection):
                _refuse_unfinished(connection, STOPPING)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        self.ready.set()


async def start_http(
    stack: AsyncExitStack, app, host: str, port: int, request_timeout_s: float = DEFAULT_HTTP_REQUEST_TIMEOUT_S
) -> int:
    """Serves `app` on host:port (0 picks a free port); returns the bound port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # No proxy-headers middleware: nothing here reads the client address, and it costs a call per request.
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        ws="none",
        timeout_graceful_shutdown=GRACEFUL_STOP_S,
    )
    server = EmbeddedServer(config, request_timeout_s)
    task = spawn(server.serve(sockets=[sock]), "ingress-http")
    ready = asyncio.create_task(server.ready.wait())

    async def stop() -> None:
        server.should_exit = True
        await task
        sock.close()

    stack.push_async_callback(stop)
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not server.ready.is_set():
        ready.cancel()
        task.result()
        raise OSError(f"ingress HTTP server stopped during start-up on {host}:{port}")
    return sock.getsockname()[1]


async def start(stack: AsyncExitStack, runtime: Runtime) -> None:
    config = runtime.config
    sealer = Sealer(config.secret_key) if config.secret_key else None
    signing_keys = SigningKeys(sealer)
    limiter = RateLimiter(config.webhook_rate_per_s, config.webhook_burst)
    trigger_index = TriggerIndex()
    views = WebhookViews(limiter)

    def webhook_changed(key: str, _value) -> None:
        signing_keys.forget(key)
        limiter.forget(key)
        views.forget(key)

    webhooks: KvMirror[feed_pb2.WebhookRecord] = KvMirror(
        runtime.buckets.webhooks, feed_pb2.WebhookRecord, on_change=webhook_changed
    )
    triggers: KvMirror[trigger_pb2.Trigger] = KvMirror(
        runtime.buckets.triggers, trigger_pb2.Trigger, on_change=trigger_index.on_change
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
    port = await start_http(stack, app, config.http_host, config.http_port, config.http_request_timeout_s)
    base = config.public_url or f"http://{config.http_host}:{port}"
    runtime.endpoints["webhooks"] = f"{base}/hooks/"

    firer = EventFirer(runtime.js, triggers, catalog)
    consumer = EventConsumer(runtime.js, firer)
    await consumer.start()
    stack.push_async_callback(consumer.stop)
    event_service_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(firer), runtime.grpc.server)
    runtime.grpc.add("kairos.v1.EventService")
