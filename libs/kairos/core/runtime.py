"""Runs one or more services in this process: the shared NATS connection, change-feed mirrors and gRPC server.

`kairos serve <service>` runs one; `kairos dev` runs all four on one gRPC port. Every service module has
`async def start(stack, runtime)` that registers its servicers and background tasks; start-up and shut-down
are one AsyncExitStack, so shut-down runs in reverse: stop taking RPCs, finish in-flight work, drain NATS,
dispose engines.
"""

from __future__ import annotations

import asyncio
import importlib
import resource
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from kairos.core import messaging
from kairos.core.auth import Authenticator
from kairos.core.config import ServiceConfig
from kairos.core.feed import KvMirror
from kairos.core.grpcserver import GrpcServer
from kairos.core.tasks import cancel_and_wait
from kairos.v1 import feed_pb2

log = structlog.get_logger(__name__)

SERVICE_MODULES: dict[str, str] = {
    "registry": "kairos.registry.app",
    "scheduler": "kairos.scheduler.app",
    "ingress": "kairos.ingress.app",
    "executor": "kairos.executor.app",
}


@dataclass
class Runtime:
    """What every service in this process shares."""

    config: ServiceConfig
    nats: NatsClient
    js: JetStreamContext
    buckets: messaging.KairosBuckets
    api_keys: KvMirror[feed_pb2.ApiKeyRecord]
    grpc: GrpcServer
    endpoints: dict[str, str] = field(default_factory=dict)
    extras: dict[str, object] = field(default_factory=dict)
    nats_lost: asyncio.Event = field(default_factory=asyncio.Event)  # set while NATS is unreachable


ReadyCallback = Callable[[Runtime], Awaitable[None]]


async def _drain(nc: NatsClient) -> None:
    """Drains NATS on shut-down; if the server is already gone, closes without failing the shut-down."""
    try:
        await nc.drain()
    except Exception as error:
        log.warning("NATS drain failed; closing", error=str(error))
        await nc.close()


def raise_open_files_limit() -> int:
    """Raises this process's soft limit on open files to its hard limit, and returns it. Every connection is a file
    descriptor, and the soft limit is often 1,024: a few hundred clients too slow to send a request (held until
    the ingress's request timeout) would otherwise leave no room for real senders, or for NATS and the database."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:  # e.g. macOS, whose hard limit may be "unlimited"
        log.info("open files limit left as it is", soft=soft, hard=hard, error=str(error))
        return soft
    log.info("open files limit raised", soft=hard, was=soft)
    return hard


async def run_services(
    services: Sequence[str],
    config: ServiceConfig,
    *,
    on_ready: ReadyCallback | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Starts `services`, calls `on_ready`, and runs until `stop` is set (or, with `handle_signals`,
    until SIGINT/SIGTERM)."""
    unknown = [name for name in services if name not in SERVICE_MODULES]
    if unknown:
        raise ValueError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICE_MODULES)}")
    raise_open_files_limit()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)

    async with AsyncExitStack() as stack:
        # A stop asked for during start-up (which can wait minutes for NATS and JetStream) ends it there.
        starting = asyncio.create_task(_start(stack, services, config, on_ready), name="start-up")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                await stopping
            else:
                log.warning("stopped during start-up", services=list(services))
        finally:
            await cancel_and_wait(starting, stopping)
        log.info("shutting down", services=list(services))
    for signum in signals:
        loop.remove_signal_handler(signum)


async def _start(
    stack: AsyncExitStack, services: Sequence[str], config: ServiceConfig, on_ready: ReadyCallback | None
) -> None:
    """Connects to NATS, starts `services` and the gRPC server (each registering its own shut-down on `stack`),
    then calls `on_ready`."""
    nats_lost = asyncio.Event()
    nc = await messaging.connect(
        config.nats_url,
        name=f"kairos-{'+'.join(services)}",
        on_connection_change=lambda connected: nats_lost.clear() if connected else nats_lost.set(),
    )
    stack.push_async_callback(_drain, nc)
    js = nc.jetstream()
    buckets = await messaging.ensure_all_when_ready(js, config.nats_replicas)

    api_keys: KvMirror[feed_pb2.ApiKeyRecord] = KvMirror(buckets.api_keys, feed_pb2.ApiKeyRecord)
    await api_keys.start()
    stack.push_async_callback(api_keys.stop)

    async def lookup(key_id: str) -> feed_pb2.ApiKeyRecord | None:
        return await api_keys.get(key_id)

    grpc_server = GrpcServer(Authenticator(lookup, config.admin_key))
    runtime = Runtime(config, nc, js, buckets, api_keys, grpc_server, nats_lost=nats_lost)
    for name in services:
        module = importlib.import_module(SERVICE_MODULES[name])
        await module.start(stack, runtime)
        log.info("service started", service=name)

    port = await grpc_server.start(config.grpc_host, config.grpc_port)
    stack.push_async_callback(grpc_server.stop)
    runtime.endpoints["grpc"] = f"{config.grpc_host}:{port}"
    log.info("serving", services=list(services), **runtime.endpoints)
    if on_ready is not None:
        await on_ready(runtime)
