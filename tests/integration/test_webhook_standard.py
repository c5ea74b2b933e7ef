"""The ingress alone on its own nats-server, its change feed seeded directly (as the registry would publish it):
Standard Webhooks signatures made by the reference library, de-duplication of repeated deliveries, rate limits, the
`/triggers/{id}/webhook` alias, Prometheus metrics, and what happens when NATS goes away.

Fires are observed on NATS itself: a plain subscription on `kairos.fire.<workspace>.>` sees every publish,
including one JetStream would drop as a duplicate, so "nothing published" is observable.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import nats
import pytest
from google.protobuf import json_format
from standardwebhooks.webhooks import Webhook

from kairos.client.builders import action
from kairos.core import messaging
from kairos.core import secrets as kairos_secrets
from kairos.core.config import ServiceConfig
from kairos.core.names import new_id
from kairos.core.natsserver import MAX_PAYLOAD_BYTES, EmbeddedNatsServer
from kairos.core.runtime import Runtime, run_services
from kairos.core.sealing import Sealer
from kairos.ingress import endpoint
from kairos.ingress.endpoint import delivery_token
from kairos.ingress.httpserver import MAX_HEAD_BYTES
from kairos.v1 import feed_pb2, fire_pb2, run_pb2, trigger_pb2, webhook_pb2

WAIT_S = 10.0
SECRET_KEY = secrets.token_urlsafe(40)
Mode = webhook_pb2.WebhookAuthMode


@dataclass
class Fires:
    """Every FireRequest published for one workspace, as NATS delivers them."""

    received: list[fire_pb2.FireRequest] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, message) -> None:
        self.received.append(fire_pb2.FireRequest.FromString(message.data))
        self.changed.set()

    async def wait_for(self, fire_id: str) -> fire_pb2.FireRequest:
        async with asyncio.timeout(WAIT_S):
            while True:
                for fire in self.received:
                    if fire.fire_id == fire_id:
                        return fire
                self.changed.clear()
                await self.changed.wait()

    def ids(self) -> list[str]:
        return [fire.fire_id for fire in self.received]

    @classmethod
    @asynccontextmanager
    async def of(cls, nc, workspace: str) -> AsyncIterator[Fires]:
        fires = cls()
        subscription = await nc.subscribe(f"{messaging.FIRE_SUBJECT_PREFIX}.{workspace}.>", cb=fires.on_message)
        await nc.flush()
        try:
            yield fires
        finally:
            await subscription.unsubscribe()


@dataclass
class Ingress:
    runtime: Runtime
    nats: EmbeddedNatsServer
    http: httpx.AsyncClient
    sealer: Sealer = field(default_factory=lambda: Sealer(SECRET_KEY))

    @property
    def base(self) -> str:
        return self.runtime.endpoints["webhooks"].removesuffix("/hooks/")

    async def add_trigger(self, workspace: str, state=trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE):
        trigger_id = new_id("t")
        trigger = trigger_pb2.Trigger(
            name=f"workspaces/{workspace}/triggers/{trigger_id}",
            source=trigger_pb2.TriggerSource(webhook=trigger_pb2.WebhookSource()),
            action=action(prompt="seeded"),
            state=state,
            revision=1,
        )
        await self.put_trigger(trigger)
        return trigger

    async def put_trigger(self, trigger: trigger_pb2.Trigger) -> None:
        workspace, trigger_id = trigger.name.split("/")[1], trigger.name.split("/")[3]
        await self.runtime.buckets.triggers.put(f"{workspace}.{trigger_id}", trigger.SerializeToString())

    async def add_webhook(self, trigger: trigger_pb2.Trigger, mode: int, **fields) -> tuple[str, str]:
        """Seeds a webhook of `trigger`; returns its id and the secret a sender would hold."""
        webhook_id = new_id("wh")
        name = f"{trigger.name.split('/triggers/')[0]}/webhooks/{webhook_id}"
        record = feed_pb2.WebhookRecord(
            webhook=webhook_pb2.Webhook(name=name, trigger=trigger.name, auth_mode=mode, **fields), revision=1
        )
        if mode == Mode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS:
            raw = os.urandom(32)
            secret = "whsec_" + base64.b64encode(raw).decode()
            record.credentials.add(id=new_id("sec"), sealed_signing_key=self.sealer.seal(raw, name))
        else:
            secret = kairos_secrets.new_secret("whs")
            record.credentials.add(id=new_id("sec"), digest=kairos_secrets.digest(secret))
        await self.runtime.buckets.webhooks.put(webhook_id, record.SerializeToString())
        trigger.source.webhook.webhooks.append(name)
        await self.put_trigger(trigger)
        return webhook_id, secret

    def fires(self, workspace: str):
        return Fires.of(self.runtime.nats, workspace)

    async def metric(self, line_prefix: str) -> float:
        text = (await self.http.get(f"{self.base}/metrics")).text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix)]
        return sum(values)


@pytest.fixture
async def ingress(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ingress]:
    """The ingress on a nats-server of its own; `indirect` parametrization sets that server's max payload."""
    max_payload = getattr(request, "param", MAX_PAYLOAD_BYTES)
    async with EmbeddedNatsServer(tmp_path / "nats", max_payload=max_payload) as nats_server:
        config = ServiceConfig.from_env(
            {
                "KAIROS_NATS_URL": nats_server.url,
                "KAIROS_GRPC_PORT": "0",
                "KAIROS_HTTP_PORT": "0",
                "KAIROS_SECRET_KEY": SECRET_KEY,
                "KAIROS_ADMIN_KEY": secrets.token_urlsafe(24),
                "KAIROS_WEBHOOK_RATE_PER_S": "1000",
                "KAIROS_WEBHOOK_BURST": "1000",
            }
        )
        ready: asyncio.Future[Runtime] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()

        async def on_ready(runtime: Runtime) -> None:
            ready.set_result(runtime)

        task = asyncio.create_task(
            run_services(("ingress",), config, on_ready=on_ready, stop=stop, handle_signals=False)
        )
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            task.result()
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                yield Ingress(ready.result(), nats_server, http)
        finally:
            stop.set()
            await task


def signed(secret: str, body: bytes, message_id: str, timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks headers made by the reference library."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def refused(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == error and response.json()["message"], response.text


async def test_standard_webhooks_signatures(ingress: Ingress) -> None:
    trigger = await ingress.add_trigger("sw")
    webhook_id, secret = await ingress.add_webhook(
        trigger, Mode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS, field_mapping={"data.email": "email"}
    )
    url = f"{ingress.base}/hooks/{webhook_id}"
    body = b'{"type": "invoice.paid", "data": {"email": "ada@example.com", "amount": 12}}'
    async with ingress.fires("sw") as fires:
        accepted = await ingress.http.post(url, content=body, headers=signed(secret, body, "msg_1") | {"x-event": "x"})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"event_id": "msg_1", "status": "accepted"}
        fire = await fires.wait_for(f"{trigger.name.split('/triggers/')[0]}/webhooks/{webhook_id}@msg_1")
        assert fire.event_type == "invoice.paid" and fire.trigger == trigger.name
        assert fire.payload_json == body  # the body exactly as signed
        assert json_format.MessageToDict(fire.input_overrides) == {"email": "ada@example.com"}

        # refusals: each a 401 naming the problem, none a fire
        good = signed(secret, body, "msg_2")
        for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            headers = {k: v for k, v in good.items() if k != missing}
            refused(await ingress.http.post(url, content=body, headers=headers), 401, "missing_signature_headers")
        stale = signed(secret, body, "msg_2", int(time.time()) - 301)
        refused(await ingress.http.post(url, content=body, headers=stale), 401, "stale_timestamp")
        refused(await ingress.http.post(url, content=body + b" ", headers=good), 401, "invalid_signature")
        tampered = body.replace(b"invoice.paid", b"invoice.void")
        refused(await ingress.http.post(url, content=tampered, headers=good), 401, "invalid_signature")
        _, other_secret = await ingress.add_webhook(trigger, Mode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS)
        forged = signed(other_secret, body, "msg_2")
        refused(await ingress.http.post(url, content=body, headers=forged), 401, "invalid_signature")
        # any JSON value is a payload; an array has no event type
        listed = b'[{"type": "invoice.paid"}, 2]'
        response = await ingress.http.post(url, content=listed, headers=signed(secret, listed, "msg_4"))
        assert response.status_code == 202, response.text
        fire = await fires.wait_for(f"{trigger.name.split('/triggers/')[0]}/webhooks/{webhook_id}@msg_4")
        assert fire.payload_json == listed and not fire.event_type
        # a bearer token is no way into a signed webhook
        bearer = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
        refused(await ingress.http.post(url, content=body, headers=bearer), 401, "missing_signature_headers")

        # rotation: the sender signs with old and new keys; the webhook holds only the new one now
        record = await ingress.runtime.extras["ingress.webhooks"].get(webhook_id)
        raw = os.urandom(32)
        new_secret = "whsec_" + base64.b64encode(raw).decode()
        rotated = feed_pb2.WebhookRecord()
        rotated.CopyFrom(record)
        del rotated.credentials[:]
        rotated.credentials.add(id=new_id("sec"), sealed_signing_key=ingress.sealer.seal(raw, record.webhook.name))
        await ingress.runtime.buckets.webhooks.put(webhook_id, rotated.SerializeToString())
        await ingress.runtime.extras["ingress.webhooks"].wait_until(
            webhook_id, lambda value: value is not None and len(value.credentials) == 1 and value == rotated
        )
        # both signatures over the same timestamp (a second may tick between the two requests)
        now = int(time.time())
        headers = signed(secret, body, "msg_3", now)
        refused(await ingress.http.post(url, content=body, headers=headers), 401, "invalid_signature")
        both = f"{headers['webhook-signature']} {signed(new_secret, body, 'msg_3', now)['webhook-signature']}"
        accepted = await ingress.http.post(url, content=body, headers=headers | {"webhook-signature": both})
        assert accepted.status_code == 202, accepted.text
        await fires.wait_for(f"{record.webhook.name}@msg_3")
        assert fires.ids() == [f"{record.webhook.name}@{message_id}" for message_id in ("msg_1", "msg_4", "msg_3")]

    assert await ingress.metric('kairos_ingress_verification_failures_total{reason="invalid_signature"}') == 4
    assert await ingress.metric('kairos_ingress_verification_failures_total{reason="stale_timestamp"}') == 1
    assert await ingress.metric('kairos_ingress_requests_total{status="202"}') == 3
    assert await ingress.metric("kairos_ingress_publish_seconds_count") == 3


async def test_repeated_deliveries_are_stored_once(ingress: Ingress) -> None:
    trigger = await ingress.add_trigger("dedup")
    webhook_id, secret = await ingress.add_webhook(trigger, Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER)
    url = f"{ingress.base}/hooks/{webhook_id}"
    name = f"workspaces/dedup/webhooks/{webhook_id}"
    auth = {"X-Trigger-Secret": secret}

    async def deliver(body: dict, key: dict) -> dict:
        response = await ingress.http.post(url, json=body, headers=auth | key)
        assert response.status_code == 202, response.text
        return response.json()

    first = await deliver({"type": "a"}, {"Idempotency-Key": "order-17"})
    assert first == {"event_id": "order-17", "status": "accepted"}
    # a retry (even with another body), and two racing retries, are answered with the original event id
    retries = await asyncio.gather(*(deliver({"type": "b"}, {"Idempotency-Key": "order-17"}) for _ in range(3)))
    assert retries == [first] * 3
    assert await deliver({"type": "c"}, {"webhook-id": "order-18"}) == {"event_id": "order-18", "status": "accepted"}

    js = ingress.runtime.js
    trigger_subject = messaging.fire_subject("dedup", trigger.name.rpartition("/")[2])
    subjects = {f"{trigger_subject}.{delivery_token(webhook_id, key)}": key for key in ("order-17", "order-18")}
    info = await js.stream_info(messaging.FIRES_STREAM, subjects_filter=f"{trigger_subject}.>")
    assert info.state.subjects == dict.fromkeys(subjects, 1)
    stored = await js.get_last_msg(messaging.FIRES_STREAM, next(iter(subjects)))
    fire = fire_pb2.FireRequest.FromString(stored.data)
    assert (fire.fire_id, fire.event_type) == (f"{name}@order-17", "a")
    # the subject refused the repeats, not JetStream's Msg-Id window: keyed fires carry no Msg-Id at all
    assert messaging.MSG_ID_HEADER not in (stored.headers or {})
    assert await ingress.metric("kairos_ingress_deduplicated_total") == 3


async def test_long_and_non_ascii_sender_keys_are_kept_whole(ingress: Ingress) -> None:
    """Two keys that differ only past the length an event id keeps are two deliveries (the key was once cut there,
    and the second delivery was answered as a repeat and never fired); a UTF-8 key comes back as sent."""
    trigger = await ingress.add_trigger("keys")
    webhook_id, secret = await ingress.add_webhook(trigger, Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER)
    url = f"{ingress.base}/hooks/{webhook_id}"

    async def deliver(key: bytes) -> str:
        response = await ingress.http.post(url, json={}, headers={"X-Trigger-Secret": secret, "Idempotency-Key": key})
        assert response.status_code == 202, response.text
        return response.json()["event_id"]

    shared = b"order/" + b"k" * endpoint.MAX_SENDER_KEY_CHARS
    first, second = await deliver(shared + b"/1"), await deliver(shared + b"/2")
    assert first != second
    assert len(first) == len(second) == endpoint.MAX_SENDER_KEY_CHARS + 1
    assert await deliver(shared + b"/1") == first
    assert await deliver("clé-ü".encode()) == "clé-ü"
    info = await ingress.runtime.js.stream_info(messaging.FIRES_STREAM, subjects_filter="kairos.fire.keys.>")
    assert info.state.messages == 3


@pytest.mark.parametrize("ingress", [64 * 1024], indirect=True)
async def test_a_fire_over_the_nats_max_payload_is_a_413_not_a_503(ingress: Ingress) -> None:
    """A body under the ingress's limit whose fire NATS cannot carry is refused for good (a 503 would make the
    sender retry forever), and nothing is stored."""
    trigger = await ingress.add_trigger("big")
    webhook_id, secret = await ingress.add_webhook(trigger, Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER)
    url = f"{ingress.base}/hooks/{webhook_id}"
    auth = {"X-Trigger-Secret": secret, "Content-Type": "application/json"}
    large = b'{"type": "a", "pad": "' + b"x" * (64 * 1024) + b'"}'
    refused(await ingress.http.post(url, content=large, headers=auth), 413, "body_too_large")
    small = await ingress.http.post(url, content=b'{"type": "a"}', headers=auth)
    assert small.status_code == 202, small.text
    info = await ingress.runtime.js.stream_info(messaging.FIRES_STREAM)
    assert info.state.messages == 1


async def test_rate_limit_and_trigger_alias(ingress: Ingress) -> None:
    trigger = await ingress.add_trigger("busy")
    limited = webhook_pb2.RateLimit(requests_per_second=0.01, burst=2)
    webhook_id, secret = await ingress.add_webhook(
        trigger, Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER, rate_limit=limited
    )
    url = f"{ingress.base}/hooks/{webhook_id}"
    auth = {"X-Trigger-Secret": secret}
    # forged requests do not use up the sender's allowance
    for _ in range(5):
        refused(await ingress.http.post(url, json={}, headers={"X-Trigger-Secret": "nope"}), 401, "invalid_credentials")
    assert [(await ingress.http.post(url, json={}, headers=auth)).status_code for _ in range(2)] == [202, 202]
    limited_response = await ingress.http.post(url, json={}, headers=auth)
    refused(limited_response, 429, "rate_limited")
    assert int(limited_response.headers["retry-after"]) >= 1

    # the alias finds the trigger's X-Trigger-Secret webhook by its secret, even one the ingress's webhook
    # mirror has not seen yet (stopped here; in CI it once lagged the trigger mirror): read from the bucket
    await ingress.runtime.extras["ingress.webhooks"].stop()
    other_id, other_secret = await ingress.add_webhook(trigger, Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER)
    trigger_id = trigger.name.rsplit("/", 1)[1]
    await ingress.runtime.extras["ingress.triggers"].wait_until(
        f"busy.{trigger_id}", lambda value: value is not None and len(value.source.webhook.webhooks) == 2
    )
    alias = f"{ingress.base}/triggers/{trigger_id}/webhook"
    async with ingress.fires("busy") as fires:
        accepted = await ingress.http.post(alias, json={"type": "x"}, headers={"X-Trigger-Secret": other_secret})
        assert accepted.status_code == 202, accepted.text
        fire = await fires.wait_for(f"workspaces/busy/webhooks/{other_id}@{accepted.json()['event_id']}")
        assert fire.webhook == f"workspaces/busy/webhooks/{other_id}"
    refused(await ingress.http.post(alias, json={}, headers=auth), 429, "rate_limited")
    refused(await ingress.http.post(alias, json={}, headers={"X-Trigger-Secret": "nope"}), 401, "invalid_credentials")
    refused(await ingress.http.post(alias, json={}), 401, "missing_credentials")
    for unknown in (new_id("t"), "NOT-AN-ID"):
        response = await ingress.http.post(f"{ingress.base}/triggers/{unknown}/webhook", json={}, headers=auth)
        refused(response, 404, "trigger_not_found")
    assert await ingress.metric('kairos_ingress_requests_total{status="429"}') == 2


async def test_made_up_webhook_ids_are_looked_up_in_nats_at_a_bounded_rate(ingress: Ingress, monkeypatch) -> None:
    """A webhook the mirror does not hold is looked up in its bucket (a new one reaches the mirror a little
    later), but a flood of made-up ids must not become as many NATS requests: past the look-up budget, 404 is
    answered from the mirror alone."""
    monkeypatch.setattr(endpoint, "UNMIRRORED_LOOKUPS_PER_S", 5.0)
    monkeypatch.setattr(endpoint, "UNMIRRORED_LOOKUPS_BURST", 10)
    stream = f"KV_{messaging.WEBHOOKS_BUCKET}"
    watcher = await nats.connect(ingress.nats.url)
    try:
        # Both ways nats-py reads a key: a direct get, or the stream's message get.
        subscriptions = [
            await watcher.subscribe(subject)
            for subject in (
                f"$JS.API.DIRECT.GET.{stream}.>",
                f"$JS.API.DIRECT.GET.{stream}",
                f"$JS.API.STREAM.MSG.GET.{stream}",
            )
        ]
        await watcher.flush()
        started = time.monotonic()
        for _ in range(40):
            refused(await ingress.http.post(f"{ingress.base}/hooks/{new_id('wh')}", json={}), 404, "webhook_not_found")
        elapsed = time.monotonic() - started
        await watcher.flush()  # each look-up request the ingress sent is in a subscription's queue by now
        lookups = sum(subscription.pending_msgs for subscription in subscriptions)
    finally:
        await watcher.close()
    assert 10 <= lookups <= 10 + 5.0 * elapsed + 1, (lookups, elapsed)


async def test_answers_the_http_server_gives_on_its_own_are_counted_by_status(ingress: Ingress) -> None:
    address = urlsplit(ingress.base)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(b"POST /hooks/x HTTP/1.1\r\nhost: a\r\nx-padding: " + b"a" * (2 * MAX_HEAD_BYTES))
        async with asyncio.timeout(WAIT_S):
            answer = await reader.read()  # everything sent before the server closed the connection
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer
    assert await ingress.metric('kairos_ingress_requests_total{status="431"}') == 1


async def test_nats_outage_is_503_and_not_ready(ingress: Ingress) -> None:
    trigger = await ingress.add_trigger("outage")
    webhook_id, secret = await ingress.add_webhook(trigger, Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER)
    await ingress.runtime.extras["ingress.webhooks"].wait_until(webhook_id, lambda value: value is not None)
    url = f"{ingress.base}/hooks/{webhook_id}"
    ready = await ingress.http.get(f"{ingress.base}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}

    await ingress.nats.stop()
    async with asyncio.timeout(WAIT_S):
        await ingress.runtime.nats_lost.wait()
    not_ready = await ingress.http.get(f"{ingress.base}/readyz")
    assert not_ready.status_code == 503, not_ready.text
    assert (await ingress.http.get(f"{ingress.base}/healthz")).status_code == 200
    response = await ingress.http.post(url, json={"type": "x"}, headers={"X-Trigger-Secret": secret})
    refused(response, 503, "unavailable")
    assert response.headers["retry-after"] == "5"
    unknown = await ingress.http.post(
        f"{ingress.base}/hooks/{new_id('wh')}", json={}, headers={"X-Trigger-Secret": secret}
    )
    refused(unknown, 503, "unavailable")


async def test_signing_secret_from_the_registry_end_to_end(suite) -> None:
    """A `whsec_` secret issued by the registry verifies, and a retried delivery is one run."""
    from kairos.client import webhook_trigger
    from kairos.v1 import run_service_pb2, trigger_service_pb2, webhook_service_pb2

    key = await suite.new_workspace("signed")
    async with suite.client(key) as kairos, httpx.AsyncClient(timeout=10) as http:
        trigger = (
            await kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger()))
        ).trigger
        created = await kairos.webhooks.CreateWebhook(
            webhook_service_pb2.CreateWebhookRequest(
                webhook=webhook_pb2.Webhook(trigger=trigger.name, auth_mode=Mode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS)
            )
        )
        assert created.secret.startswith("whsec_")
        url = suite.webhooks_url + created.webhook.name.rsplit("/", 1)[1]
        body = b'{"type": "charge.succeeded", "id": "ch_1"}'
        tracer = await nats.connect(suite.nats_url)
        traces = await tracer.subscribe("kairos.trace.signed.>")
        # the retry is refused by JetStream: the delivery's subject already holds its fire
        for _ in range(2):
            response = await http.post(url, content=body, headers=signed(created.secret, body, "msg_a"))
            assert response.status_code == 202 and response.json()["event_id"] == "msg_a", response.text
        forged = signed("whsec_" + "A" * 44, body, "msg_b")
        refused(await http.post(url, content=body, headers=forged), 401, "invalid_signature")
        response = await http.post(url, content=body, headers=signed(created.secret, body, "msg_c"))
        assert response.status_code == 202

        expected = {f"{created.webhook.name}@msg_a", f"{created.webhook.name}@msg_c"}
        completed: set[str] = set()
        async with asyncio.timeout(WAIT_S):
            async for message in traces.messages:
                event = run_pb2.TraceEvent.FromString(message.data)
                if event.type == "run.completed":
                    completed.add(event.fire_id)
                if completed >= expected:
                    break
        await tracer.close()
        runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger.name))).runs
        assert sorted(run.fire_id for run in runs) == sorted(expected)
        assert {run.status for run in runs} == {run_pb2.RunStatus.RUN_STATUS_COMPLETED}
        subject = messaging.fire_subject("signed", trigger.name.rsplit("/", 1)[1])
        stream = await suite.runtime.js.stream_info(messaging.FIRES_STREAM, subjects_filter=f"{subject}.>")
        webhook_id = created.webhook.name.rsplit("/", 1)[1]
        assert stream.state.subjects == {
            f"{subject}.{delivery_token(webhook_id, key)}": 1 for key in ("msg_a", "msg_c")
        }


async def test_a_corrupt_record_is_a_json_500(ingress: Ingress) -> None:
    """A webhook whose record names no valid trigger (never written by the registry) answers a JSON 500 and the
    server keeps serving."""
    webhook_id = new_id("wh")
    record = feed_pb2.WebhookRecord(
        webhook=webhook_pb2.Webhook(
            name=f"workspaces/broken/webhooks/{webhook_id}",
            trigger="not a trigger name",
            auth_mode=Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER,
        ),
        revision=1,
    )
    await ingress.runtime.buckets.webhooks.put(webhook_id, record.SerializeToString())
    response = await ingress.http.post(f"{ingress.base}/hooks/{webhook_id}", json={}, headers={"X-Trigger-Secret": "x"})
    refused(response, 500, "internal")
    assert (await ingress.http.get(f"{ingress.base}/healthz")).status_code == 200
