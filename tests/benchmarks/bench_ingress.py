"""Webhook ingress throughput: Standard Webhooks (HMAC) requests accepted per second by ONE ingress process
(`python -m kairos.ingress`, its own nats-server, the change feed seeded directly), side by side in the same run
with a bare "return 202" plain ASGI app served by the ingress's own HTTP server set-up (`start_http`, uvloop) in a
second process, and with the "acked floor": the bare app that first stores the body in JetStream as the ingress
stores a keyed delivery and waits for the ack, in a third. All receive the identical signed requests from the
same raw-HTTP keep-alive client with bounded concurrency, in alternating rounds so a burst of load from elsewhere
on the machine hits all alike. A server's throughput is its peak over CONNECTION_LEVELS: a handler that answers
only after an ack needs more requests in flight to keep its core busy than one that answers at once, while a
server given more connections than it needs loses a little to the work each connection costs (the client's too).
Also: forged requests refused per second; genuine requests accepted per second while as many connections flood
the ingress with forged ones (and how many of those it refused meanwhile), which shows what a flood leaves real
senders; and the CPU time each server process (and nats-server) spent per request.

`python -m tests.benchmarks.bench_ingress bare <port> [<nats url>]` serves the bare app (used by the benchmark).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop

from kairos.client.builders import action
from kairos.core import messaging
from kairos.core.jetstream import JetStreamPublisher
from kairos.core.names import new_id
from kairos.core.natsserver import EmbeddedNatsServer, free_port
from kairos.core.sealing import Sealer
from kairos.devtools.processes import ServiceProcesses, terminate
from kairos.ingress.asgi import Answer, send_answer
from kairos.ingress.endpoint import FIRST_ON_SUBJECT
from kairos.ingress.httpserver import start_http
from kairos.v1 import feed_pb2, trigger_pb2, webhook_pb2
from tests.benchmarks.procstat import cpu_seconds
from tests.benchmarks.rawhttp import connect, read_response, request_bytes

FIGURES = (
    "ingress.accepted_per_s",
    "ingress.accepted_p50_ms",
    "ingress.accepted_p99_ms",
    "ingress.bare_per_s",
    "ingress.accepted_per_s.vs.bare",
    "ingress.accepted_peak_connections",
    "ingress.bare_peak_connections",
    "ingress.acked_floor_per_s",
    "ingress.acked_floor_per_s.vs.bare",
    "ingress.accepted_per_s.vs.acked_floor",
    "ingress.rejected_per_s",
    "ingress.accepted_per_s_under_flood",
    "ingress.rejected_per_s_under_flood",
    "ingress.accepted_cpu_us",
    "ingress.accepted_nats_cpu_us",
    "ingress.bare_cpu_us",
    "ingress.acked_floor_cpu_us",
)
ROUNDS = 3
PER_ROUND = 5_000
REJECTED = 10_000
WARM_UP = 1_000
CONNECTIONS = 64
CONNECTION_LEVELS = (CONNECTIONS, 4 * CONNECTIONS)  # p50/p99 latency is the ingress's at CONNECTIONS
WORKSPACE = "bench"
BODY = b'{"type": "invoice.paid", "data": {"invoice": "in_123", "amount": 4200, "currency": "eur"}}'
BARE_ANSWER = b'{"event_id":"msg_00000000000000000","status":"accepted"}'
ACKED_SUBJECT = messaging.fire_subject(WORKSPACE, "acked")
ROOT = Path(__file__).resolve().parents[2]


class BareApp:
    """Reads the body and answers 202 with a body shaped like the ingress's, through the ingress's own
    `send_answer`: the floor any handler stands on. With a publisher it first stores the body in KAIROS_FIRES the
    way the ingress stores a keyed delivery (a subject of its own, first on it) and waits for JetStream's ack:
    the floor of any handler that answers 202 only once the event is stored."""

    def __init__(self, publisher=None) -> None:
        self._publisher = publisher

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if self._publisher is not None:
            delivery = hashlib.sha256(dict(scope["headers"]).get(b"webhook-id", b"")).hexdigest()[:40]
            # Exactly the ingress's way (WebhookEndpoint._accept): one publish, one await for its ack.
            await self._publisher.publish(f"{ACKED_SUBJECT}.{delivery}", b"".join(chunks), headers=FIRST_ON_SUBJECT)
        await send_answer(send, Answer(202, BARE_ANSWER))


async def serve_bare(port: int, nats_url: str | None) -> None:
    """BareApp (with a publisher when `nats_url` is given) on the very HTTP server set-up of the ingress
    (kairos.ingress.httpserver.start_http), until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with AsyncExitStack() as stack:
        publisher = None
        if nats_url:
            nc = await messaging.connect(nats_url, "bench-acked")
            stack.push_async_callback(nc.close)
            publisher = JetStreamPublisher(nc)
            await publisher.start()
            stack.push_async_callback(publisher.close)
        await start_http(stack, BareApp(publisher), "127.0.0.1", port)
        await stop.wait()


def signed_requests(webhook_id: str, key: bytes, count: int, *, forged: bool = False) -> list[bytes]:
    timestamp = str(int(time.time()))
    requests = []
    for index in range(count):
        message_id = f"msg_{secrets.token_hex(8)}_{index}"
        mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + BODY, hashlib.sha256).digest()
        if forged:
            mac = bytes(32)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        }
        requests.append(request_bytes(f"/hooks/{webhook_id}", headers, BODY))
    return requests


async def drive(
    port: int, requests: list[bytes], expected: int, connections: int = CONNECTIONS
) -> tuple[float, list[float]]:
    """`drive_here` on a uvloop event loop of its own (in a thread), so the client spends little CPU per request."""
    return await asyncio.to_thread(uvloop.run, drive_here(port, requests, expected, connections))


async def drive_here(port: int, requests: list[bytes], expected: int, connections: int) -> tuple[float, list[float]]:
    """Sends `requests` over `connections` keep-alive connections; returns (requests/s, latencies in s)."""
    queue = iter(requests)
    latencies: list[float] = []
    unexpected: list[int] = []

    async def connection() -> None:
        reader, writer = await connect(port)
        try:
            for request in queue:
                started = time.perf_counter()
                writer.write(request)
                status = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                if status != expected:
                    unexpected.append(status)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    if unexpected:
        raise RuntimeError(f"{len(unexpected)} answers were not {expected}: e.g. {unexpected[:5]}")
    return len(requests) / elapsed, latencies


async def drive_under_flood(port: int, genuine: list[bytes], forged: list[bytes]) -> tuple[float, float]:
    """`drive_under_flood_here` on a uvloop event loop of its own (in a thread)."""
    return await asyncio.to_thread(uvloop.run, drive_under_flood_here(port, genuine, forged))


async def drive_under_flood_here(port: int, genuine: list[bytes], forged: list[bytes]) -> tuple[float, float]:
    """Sends `genuine` over CONNECTIONS // 2 connections while as many others send `forged` (over and over) until
    every genuine request is answered; returns (genuine accepted/s, forged refused/s) over that time."""
    flooding = True
    refused = 0
    unexpected: list[int] = []

    async def connection(requests, expected: int, flood: bool) -> None:
        nonlocal refused
        reader, writer = await connect(port)
        try:
            for request in requests:
                if flood and not flooding:
                    return
                writer.write(request)
                status = await read_response(reader)
                if status != expected:
                    unexpected.append(status)
                elif flood and flooding:
                    refused += 1
        finally:
            writer.close()

    half = CONNECTIONS // 2
    flood = [asyncio.create_task(connection(itertools.cycle(forged), 401, True)) for _ in range(half)]
    started = time.perf_counter()
    queue = iter(genuine)
    await asyncio.gather(*(connection(queue, 202, False) for _ in range(half)))
    elapsed = time.perf_counter() - started
    flooding = False
    await asyncio.gather(*flood)
    if unexpected:
        raise RuntimeError(f"{len(unexpected)} unexpected answers under the flood: e.g. {unexpected[:5]}")
    return len(genuine) / elapsed, refused / elapsed


async def wait_http(url: str, process: asyncio.subprocess.Process, method: str = "GET") -> None:
    async with httpx.AsyncClient(timeout=1) as http, asyncio.timeout(60):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"{url}: the server exited with {process.returncode}")
            try:
                response = await http.request(method, url)
                if response.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


async def seed(nats_url: str, secret_key: str) -> tuple[str, bytes]:
    """A webhook trigger and a Standard Webhooks webhook in the change feed, as the registry publishes them."""
    nc = await messaging.connect(nats_url, "bench-seed")
    try:
        buckets = await messaging.ensure_all(nc.jetstream())
        trigger_id, webhook_id = new_id("t"), new_id("wh")
        webhook_name = f"workspaces/{WORKSPACE}/webhooks/{webhook_id}"
        trigger = trigger_pb2.Trigger(
            name=f"workspaces/{WORKSPACE}/triggers/{trigger_id}",
            source=trigger_pb2.TriggerSource(webhook=trigger_pb2.WebhookSource(webhooks=[webhook_name])),
            action=action(prompt="bench"),
            state=trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE,
            revision=1,
        )
        key = os.urandom(32)
        record = feed_pb2.WebhookRecord(
            webhook=webhook_pb2.Webhook(
                name=webhook_name,
                trigger=trigger.name,
                auth_mode=webhook_pb2.WebhookAuthMode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS,
                rate_limit=webhook_pb2.RateLimit(requests_per_second=1e9, burst=1_000_000_000),
            ),
            revision=1,
        )
        record.credentials.add(id=new_id("sec"), sealed_signing_key=Sealer(secret_key).seal(key, webhook_name))
        await buckets.triggers.put(f"{WORKSPACE}.{trigger_id}", trigger.SerializeToString())
        await buckets.webhooks.put(webhook_id, record.SerializeToString())
        return webhook_id, key
    finally:
        await nc.close()


def percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=1000)[round(fraction * 1000) - 1]


@dataclass
class Totals:
    """One server's figures summed over the rounds: requests and seconds by connection count, the latencies at
    CONNECTIONS, and the CPU seconds of each watched process."""

    requests: dict[int, int] = field(default_factory=dict)
    elapsed: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    async def drive(self, port: int, requests: list[bytes], watched: dict[str, int], connections: int) -> None:
        """Drives `requests` (each answered 202) at `port`, adding the CPU time of the `watched` processes."""
        before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        rate, latencies = await drive(port, requests, 202, connections)
        self.requests[connections] = self.requests.get(connections, 0) + len(requests)
        self.elapsed[connections] = self.elapsed.get(connections, 0.0) + len(requests) / rate
        if connections == CONNECTIONS:
            self.latencies.extend(latencies)
        for name, pid in watched.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu_seconds(pid) - before[name]

    def peak(self) -> tuple[float, int]:
        """The highest requests/s over the connection counts, and that count."""
        return max((self.requests[count] / self.elapsed[count], count) for count in self.requests)

    def cpu_us(self, name: str) -> float:
        """CPU microseconds of process `name` per request."""
        return self.cpu[name] / sum(self.requests.values()) * 1e6


async def start_bare(servers: AsyncExitStack, port: int, nats_url: str | None = None) -> asyncio.subprocess.Process:
    """The bare app in a process of its own, stopped when `servers` closes (even if it never answers)."""
    args = ["bare", str(port)] + ([nats_url] if nats_url else [])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.benchmarks.bench_ingress",
        *args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    servers.push_async_callback(terminate, process, 15)
    await wait_http(f"http://127.0.0.1:{port}/hooks/x", process, "POST")
    return process


async def run(report) -> None:
    secret_key = secrets.token_urlsafe(40)
    with tempfile.TemporaryDirectory() as scratch:
        async with EmbeddedNatsServer(Path(scratch) / "nats") as nats_server, AsyncExitStack() as servers:
            webhook_id, key = await seed(nats_server.url, secret_key)
            ingress_port, bare_port, acked_port = free_port(), free_port(), free_port()
            env = {
                "KAIROS_NATS_URL": nats_server.url,
                "KAIROS_HTTP_PORT": str(ingress_port),
                "KAIROS_SECRET_KEY": secret_key,
                "KAIROS_LOG_LEVEL": "warning",
            }
            processes = await servers.enter_async_context(ServiceProcesses(Path(scratch) / "logs", env))
            ingress = await processes.launch("ingress")
            await wait_http(f"http://127.0.0.1:{ingress_port}/readyz", ingress.process)
            bare = await start_bare(servers, bare_port)
            acked = await start_bare(servers, acked_port, nats_server.url)
            warm_up = signed_requests(webhook_id, key, WARM_UP)
            for port in (ingress_port, bare_port, acked_port):
                await drive(port, warm_up, 202)

            accepted, bare_totals, acked_totals = Totals(), Totals(), Totals()
            for _, connections in itertools.product(range(ROUNDS), CONNECTION_LEVELS):
                requests = signed_requests(webhook_id, key, PER_ROUND)
                ingress_pids = {"ingress": ingress.process.pid, "nats": nats_server.pid}
                await accepted.drive(ingress_port, requests, ingress_pids, connections)
                await bare_totals.drive(bare_port, requests, {"bare": bare.pid}, connections)
                await acked_totals.drive(
                    acked_port, requests, {"acked": acked.pid, "nats": nats_server.pid}, connections
                )
            forged = signed_requests(webhook_id, key, REJECTED, forged=True)
            rejected_rate, _ = await drive(ingress_port, forged, 401)
            genuine = signed_requests(webhook_id, key, PER_ROUND)
            flooded_rate, refused_rate = await drive_under_flood(ingress_port, genuine, forged)
    (accepted_rate, accepted_connections), (bare_rate, bare_connections) = accepted.peak(), bare_totals.peak()
    acked_rate, _ = acked_totals.peak()
    report("ingress.accepted_per_s", accepted_rate, "req/s")
    report("ingress.accepted_p50_ms", percentile(accepted.latencies, 0.5) * 1000, "ms")
    report("ingress.accepted_p99_ms", percentile(accepted.latencies, 0.99) * 1000, "ms")
    report("ingress.bare_per_s", bare_rate, "req/s")
    report("ingress.accepted_per_s.vs.bare", accepted_rate / bare_rate, "x")
    report("ingress.accepted_peak_connections", accepted_connections, "connections")
    report("ingress.bare_peak_connections", bare_connections, "connections")
    report("ingress.acked_floor_per_s", acked_rate, "req/s")
    report("ingress.acked_floor_per_s.vs.bare", acked_rate / bare_rate, "x")
    report("ingress.accepted_per_s.vs.acked_floor", accepted_rate / acked_rate, "x")
    report("ingress.rejected_per_s", rejected_rate, "req/s")
    report("ingress.accepted_per_s_under_flood", flooded_rate, "req/s")
    report("ingress.rejected_per_s_under_flood", refused_rate, "req/s")
    report("ingress.accepted_cpu_us", accepted.cpu_us("ingress"), "us/req")
    report("ingress.accepted_nats_cpu_us", accepted.cpu_us("nats"), "us/req")
    report("ingress.bare_cpu_us", bare_totals.cpu_us("bare"), "us/req")
    report("ingress.acked_floor_cpu_us", acked_totals.cpu_us("acked"), "us/req")


if __name__ == "__main__" and sys.argv[1:2] == ["bare"]:
    uvloop.run(serve_bare(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
