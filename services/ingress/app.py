"""Composition root of the ingress: change-feed mirrors, the webhook HTTP server and EventService."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from contextlib import AsyncExitStack

import uvicorn

from kairos.core.feed import KvMirror
from kairos.core.runtime import Runtime
from kairos.core.tasks import spawn
from kairos.ingress.endpoint import WebhookEndpoint, build_app
from kairos.ingress.events import EventServicer
from kairos.v1 import event_service_pb2_grpc, feed_pb2, trigger_pb2


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: signals belong to the process runtime, not to uvicorn."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        self.ready.set()


async def start_http(stack: AsyncExitStack, app, host: str, port: int) -> int:
    """Serves `app` on host:port (0 picks a free port); returns the bound port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False)
    server = EmbeddedServer(config)
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
    webhooks: KvMirror[feed_pb2.WebhookRecord] = KvMirror(runtime.buckets.webhooks, feed_pb2.WebhookRecord)
    triggers: KvMirror[trigger_pb2.Trigger] = KvMirror(runtime.buckets.triggers, trigger_pb2.Trigger)
    for mirror in (webhooks, triggers):
        await mirror.start()
        stack.push_async_callback(mirror.stop)

    runtime.extras["ingress.webhooks"] = webhooks
    runtime.extras["ingress.triggers"] = triggers
    endpoint = WebhookEndpoint(runtime.js, webhooks, triggers)
    app = build_app(endpoint, lambda: runtime.nats.is_connected)
    config = runtime.config
    port = await start_http(stack, app, config.http_host, config.http_port)
    base = config.public_url or f"http://{config.http_host}:{port}"
    runtime.endpoints["webhooks"] = f"{base}/hooks/"

    event_service_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(runtime.js, triggers), runtime.grpc.server)
    runtime.grpc.add("kairos.v1.EventService")
