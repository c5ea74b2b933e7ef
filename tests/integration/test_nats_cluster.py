"""The suite on a three-node NATS cluster with KAIROS_NATS_REPLICAS=3: every stream and KV bucket it declares is
kept on all three servers, and when the server the services are connected to is killed they carry on through
another one: a webhook is accepted again, and each accepted delivery runs (once: the delivery's subject holds
one fire). Services started before the cluster has a quorum wait for it instead of exiting. And on one server
that restarts, the executor asks again for the fires the restarted server forgot it was waiting for.

Waits are on conditions (the servers' /healthz, the ingress's answers, the run history), each bounded; nothing sleeps
to let something happen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path

import httpx
import nats

from kairos.client import KairosClient, webhook_trigger
from kairos.core import messaging
from kairos.core.natsserver import EmbeddedNatsServer, free_port
from kairos.devtools.suite import Suite, running_suite
from kairos.executor import worker
from kairos.executor.notify import CALLBACKS_STREAM
from kairos.v1 import run_pb2, run_service_pb2, trigger_service_pb2, webhook_pb2, webhook_service_pb2

CLUSTER_SIZE = 3
WAIT_S = 30.0
POLL_S = 0.1


async def wait_until_ok(url: str, ok) -> None:
    """Polls `url` until `ok(response)`; callers bound it with asyncio.timeout."""
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            try:
                if ok(await http.get(url)):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(POLL_S)  # between two polls of the condition


async def completed_runs(kairos: KairosClient, trigger: str, count: int) -> list[run_pb2.Run]:
    """Polls the trigger's run history until it holds `count` completed runs (or more); callers bound it."""
    while True:
        runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger))).runs
        if sum(run.status == run_pb2.RunStatus.RUN_STATUS_COMPLETED for run in runs) >= count:
            return list(runs)
        await asyncio.sleep(POLL_S)  # between two reads of the run history


async def bearer_webhook(suite: Suite, kairos: KairosClient) -> tuple[str, str, str, dict[str, str]]:
    """A new webhook trigger's bearer webhook: (trigger name, webhook name, its URL, the sender's headers)."""
    trigger = (
        await kairos.triggers.CreateTrigger(
            trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger(prompt="qualify"))
        )
    ).trigger
    created = await kairos.webhooks.CreateWebhook(
        webhook_service_pb2.CreateWebhookRequest(webhook=webhook_pb2.Webhook(trigger=trigger.name))
    )
    url = suite.webhooks_url + created.webhook.name.rsplit("/", 1)[1]
    return trigger.name, created.webhook.name, url, {"Authorization": f"Bearer {created.secret}"}


async def deliver(http: httpx.AsyncClient, url: str, headers: dict[str, str], delivery: str) -> None:
    """Posts the delivery `delivery` until it is accepted, as the issue asks of senders: again after each 503
    (which says when to retry; here at once). Callers bound it."""
    while True:
        response = await http.post(url, json={"type": delivery}, headers=headers | {"webhook-id": delivery})
        if response.status_code != 503:
            assert response.status_code == 202, response.text
            return
        assert response.headers["retry-after"]
        await asyncio.sleep(POLL_S)  # between two retries of the sender


def cluster_servers(data_dir: Path) -> list[EmbeddedNatsServer]:
    """Three nats-servers (not started) routed into one JetStream cluster."""
    route_ports = [free_port() for _ in range(CLUSTER_SIZE)]
    routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in route_ports)
    return [
        EmbeddedNatsServer(
            data_dir / f"nats-{index}",
            server_name=f"nats-{index}",
            extra_config=f"cluster {{ name: kairos, listen: 127.0.0.1:{port}, routes: [{routes}] }}",
        )
        for index, port in enumerate(route_ports)
    ]


@asynccontextmanager
async def nats_cluster(data_dir: Path) -> AsyncIterator[list[EmbeddedNatsServer]]:
    """The three servers of `cluster_servers`, yielded once each one's JetStream is current."""
    servers = cluster_servers(data_dir)
    async with AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
        async with asyncio.timeout(WAIT_S):
            for server in servers:  # /healthz answers 200 once the server's JetStream is current with the cluster
                await wait_until_ok(f"{server.monitoring_url}/healthz", lambda response: response.status_code == 200)
        yield servers


async def test_the_suite_replicates_its_streams_and_survives_losing_its_server(tmp_path: Path) -> None:
    async with (
        nats_cluster(tmp_path) as servers,
        running_suite(
            tmp_path,
            f"sqlite+aiosqlite:///{tmp_path / 'kairos.db'}",
            # A fire on its way to the executor through the killed server is redelivered after the ack wait.
            env={"KAIROS_NATS_REPLICAS": "3", "KAIROS_EXECUTOR_ACK_WAIT_S": "2"},
            nats_url=servers[0].url,
        ) as suite,
    ):
        # A client of the test's own on the other two servers: it outlives the first one.
        observer = await messaging.connect(
            servers[1].url, "test-cluster-observer", servers=[s.url for s in servers[1:]]
        )
        try:
            streams = await observer.jetstream().streams_info()
            replicas = {stream.config.name: stream.config.num_replicas for stream in streams}
            assert {messaging.FIRES_STREAM, CALLBACKS_STREAM, f"KV_{messaging.EVENT_TYPES_BUCKET}"} <= set(replicas)
            assert set(replicas.values()) == {CLUSTER_SIZE}, replicas

            key = await suite.new_workspace("acme")
            async with suite.client(key) as kairos, httpx.AsyncClient(timeout=15) as http:
                trigger, webhook, url, headers = await bearer_webhook(suite, kairos)
                async with asyncio.timeout(WAIT_S):
                    await deliver(http, url, headers, "before")
                servers[0].kill()
                # Until the ingress is back on another server, and while the stream elects a leader on the servers
                # left, nothing can be stored: 503s, which the sender retries.
                async with asyncio.timeout(WAIT_S):
                    await deliver(http, url, headers, "after")
                async with asyncio.timeout(WAIT_S):
                    runs = await completed_runs(kairos, trigger, count=2)
            fires = await observer.jetstream().stream_info(messaging.FIRES_STREAM)
        finally:
            await observer.close()
    assert fires.state.messages == 2
    assert sorted(run.fire_id for run in runs) == [f"{webhook}@{key}" for key in ("after", "before")]


async def test_fires_run_again_soon_after_the_nats_server_restarts(tmp_path: Path, monkeypatch) -> None:
    """The restarted server has forgotten the executor's standing pull request. Its idle heartbeats stop, so the
    executor asks again once it is back, instead of when the lost request would have expired (10 minutes here)."""
    monkeypatch.setattr(worker, "PULL_EXPIRES_S", 600.0)
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    try:
        async with running_suite(
            tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'kairos.db'}", nats_url=server.url
        ) as suite:
            key = await suite.new_workspace("acme")
            async with suite.client(key) as kairos, httpx.AsyncClient(timeout=15) as http:
                trigger, webhook, url, headers = await bearer_webhook(suite, kairos)
                async with asyncio.timeout(WAIT_S):
                    await deliver(http, url, headers, "before")
                    await completed_runs(kairos, trigger, count=1)
                server.kill()
                await server.start()
                async with asyncio.timeout(WAIT_S):
                    await deliver(http, url, headers, "after")  # 503s until the ingress has reconnected
                async with asyncio.timeout(WAIT_S):
                    runs = await completed_runs(kairos, trigger, count=2)
    finally:
        await server.stop()
    assert sorted(run.fire_id for run in runs) == [f"{webhook}@{key}" for key in ("after", "before")]


async def test_services_started_before_their_cluster_has_a_quorum_wait_for_it(tmp_path: Path) -> None:
    """With one server of three up, JetStream cannot answer (no quorum); the services keep asking instead of
    exiting, and start once the other two have joined."""
    first, *others = cluster_servers(tmp_path)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(first)
        watcher = await nats.connect(first.url)
        stack.push_async_callback(watcher.close)
        asked = asyncio.Event()

        async def on_request(_message) -> None:
            asked.set()

        await watcher.subscribe("$JS.API.>", cb=on_request)
        await watcher.flush()
        started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        release = asyncio.Event()

        async def run_suite() -> None:
            async with running_suite(
                tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'kairos.db'}", nats_url=first.url
            ) as suite:
                started.set_result(suite.address)
                await release.wait()

        suite = asyncio.create_task(run_suite())
        try:
            async with asyncio.timeout(WAIT_S):
                await asked.wait()  # the services asked JetStream, which has no quorum to answer with
            for server in others:
                await stack.enter_async_context(server)
            async with asyncio.timeout(WAIT_S * 2):
                await asyncio.wait({suite, started}, return_when=asyncio.FIRST_COMPLETED)
            assert started.done(), f"the services exited: {suite.exception()!r}"
        finally:
            release.set()
            if not started.done():
                suite.cancel()
            with suppress(asyncio.CancelledError):
                await suite
