"""The webhook ingress over HTTP, against the whole suite running in-process (real NATS, SQLite and PostgreSQL).

An accepted request is answered 202 with its event id and becomes exactly one run whose payload is the body
and whose input carries the webhook's mapped fields; a repeated `webhook-id` is the same event and no second
run. Every refusal has its status: 401 (credentials), 403 (disabled, in test_registry_api), 404 (no such
webhook), 415 (not JSON), 400 (malformed JSON), 413 (too large), 422 (event type not accepted).

Runs are awaited on the executor's trace events (NATS), each wait bounded; nothing sleeps.
"""

from __future__ import annotations

import json

import httpx
from google.protobuf import json_format

from kairos.client import KairosClient, webhook_trigger
from kairos.core import messaging
from kairos.devtools.suite import traces_of
from kairos.ingress.endpoint import delivery_token
from kairos.v1 import (
    run_pb2,
    run_service_pb2,
    trigger_service_pb2,
    webhook_pb2,
    webhook_service_pb2,
)

MAX_BODY = 1 << 20
Mode = webhook_pb2.WebhookAuthMode


async def create_webhook(kairos: KairosClient, trigger: str, **fields) -> tuple[webhook_pb2.Webhook, str]:
    response = await kairos.webhooks.CreateWebhook(
        webhook_service_pb2.CreateWebhookRequest(webhook=webhook_pb2.Webhook(trigger=trigger, **fields))
    )
    return response.webhook, response.secret


def hook_url(suite, webhook: webhook_pb2.Webhook) -> str:
    return suite.webhooks_url + webhook.name.rsplit("/", 1)[1]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_accepted_webhook_runs_once_per_delivery(suite) -> None:
    key = await suite.new_workspace("crm")
    async with (
        suite.client(key) as kairos,
        traces_of(suite, "crm") as traces,
        httpx.AsyncClient(timeout=10) as http,
    ):
        trigger = (
            await kairos.triggers.CreateTrigger(
                trigger_service_pb2.CreateTriggerRequest(
                    trigger=webhook_trigger(input_template={"channel": "sms", "phone_to": "nobody"})
                )
            )
        ).trigger
        webhook, secret = await create_webhook(
            kairos,
            trigger.name,
            field_mapping={"contact.phone": "phone_to", "contact.missing": "absent"},
            accepted_event_types=["lead.created"],
        )
        body = {"type": "lead.created", "contact": {"phone": "+15550100", "name": "Ada"}, "score": 0.5}
        headers = bearer(secret) | {"webhook-id": "delivery-1"}

        accepted = await http.post(hook_url(suite, webhook), json=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"event_id": "delivery-1", "status": "accepted"}
        fire_id = f"{webhook.name}@delivery-1"
        ended = await traces.run_ended(fire_id)

        run = (await kairos.runs.GetRun(run_service_pb2.GetRunRequest(name=ended.run))).run
        assert run.status == run_pb2.RunStatus.RUN_STATUS_COMPLETED
        assert run.trigger_type == run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK
        assert (run.trigger, run.webhook, run.event_type, run.fire_id) == (
            trigger.name,
            webhook.name,
            "lead.created",
            fire_id,
        )
        assert json_format.MessageToDict(run.payload) == body
        assert json_format.MessageToDict(run.input) == {"channel": "sms", "phone_to": "+15550100"}
        assert json_format.MessageToDict(run.output)["payload"] == body

        # the sender retries the same delivery: same event id, and no second run
        repeated = await http.post(hook_url(suite, webhook), json=body | {"retry": True}, headers=headers)
        assert repeated.status_code == 202
        assert repeated.json() == {"event_id": "delivery-1", "status": "accepted"}
        # a third, distinct delivery (no webhook-id: the ingress names it) on the alternative path; once its
        # run completed, the repeat would have been run before it
        webhook_id = webhook.name.rsplit("/", 1)[1]
        base = suite.webhooks_url.removesuffix("/hooks/")
        third = await http.post(
            f"{base}/api/hooks/webhook/{webhook_id}",
            json={"type": "lead.created", "contact": {"phone": "+15550199"}},
            headers=bearer(secret),
        )
        assert third.status_code == 202
        third_id = third.json()["event_id"]
        assert third_id.startswith("evt_") and third_id != "delivery-1"
        await traces.run_ended(f"{webhook.name}@{third_id}")

        runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger.name))).runs
        assert sorted(r.fire_id for r in runs) == sorted([fire_id, f"{webhook.name}@{third_id}"])
        newest = runs[0]
        assert newest.fire_id == f"{webhook.name}@{third_id}"
        assert json_format.MessageToDict(newest.input)["phone_to"] == "+15550199"
        started = [e for e in traces.events if e.fire_id == fire_id and e.type == "run.started"]
        assert len(started) == 1
        # the repeat was not even stored: the keyed delivery's subject already held its fire; the unkeyed one is
        # on the trigger's subject
        subject = messaging.fire_subject("crm", trigger.name.rsplit("/", 1)[1])
        keyed = f"{subject}.{delivery_token(webhook_id, 'delivery-1')}"
        stream = await traces.nc.jetstream().stream_info(messaging.FIRES_STREAM, subjects_filter=f"{subject}.>")
        assert stream.state.subjects == {keyed: 1}
        stream = await traces.nc.jetstream().stream_info(messaging.FIRES_STREAM, subjects_filter=subject)
        assert stream.state.subjects == {subject: 1}


async def test_refused_requests(suite) -> None:
    key = await suite.new_workspace("guard")
    async with (
        suite.client(key) as kairos,
        traces_of(suite, "guard") as traces,
        httpx.AsyncClient(timeout=10) as http,
    ):
        trigger = (
            await kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger()))
        ).trigger
        webhook, secret = await create_webhook(kairos, trigger.name, accepted_event_types=["order.paid"])
        url = hook_url(suite, webhook)
        good = {"type": "order.paid", "order": 17}

        def check(response: httpx.Response, status: int, error: str) -> None:
            assert response.status_code == status, response.text
            assert response.headers["content-type"].startswith("application/json")
            assert response.json()["error"] == error and response.json()["message"]

        # credentials
        check(await http.post(url, json=good), 401, "missing_credentials")
        check(await http.post(url, json=good, headers={"Authorization": "Basic " + secret}), 401, "missing_credentials")
        check(await http.post(url, json=good, headers={"Authorization": "Bearer"}), 401, "missing_credentials")
        check(await http.post(url, json=good, headers=bearer(secret[:-1])), 401, "invalid_credentials")
        check(await http.post(url, json=good, headers=bearer("whk_" + "A" * 43)), 401, "invalid_credentials")
        check(await http.post(url, json=good, headers={"X-Trigger-Secret": secret}), 401, "missing_credentials")

        # unknown webhooks: a well-formed id nobody issued, and ids that cannot exist, all the same 404
        base = suite.webhooks_url
        for webhook_id in ("wh_01jzzzzzzzzzzzzzzzzzzzzzzz", "WH_UPPER", "a%20b", "x" * 64, "-dash", "wh.dot"):
            response = await http.post(base + webhook_id, json=good, headers=bearer(secret))
            check(response, 404, "webhook_not_found")
            assert response.json() == {"error": "webhook_not_found", "message": "no such webhook"}

        # the body
        def post(content: bytes, content_type: str | None = "application/json"):
            headers = bearer(secret) | ({"Content-Type": content_type} if content_type else {})
            return http.post(url, content=content, headers=headers)

        encoded = json.dumps(good).encode()
        check(await post(encoded, "text/plain"), 415, "unsupported_media_type")
        check(await post(encoded, "application/x-www-form-urlencoded"), 415, "unsupported_media_type")
        check(await post(encoded, None), 415, "unsupported_media_type")
        check(await post(b'{"type": "order.paid", ', "application/json"), 400, "malformed_json")
        check(await post(b"\xff\xfe", "application/json"), 400, "malformed_json")
        check(await post(b"", "application/json"), 400, "malformed_json")
        oversize = b'{"type": "order.paid", "pad": "' + b"x" * MAX_BODY + b'"}'
        check(await post(oversize, "application/json"), 413, "body_too_large")

        # without Content-Length (chunked), the limit still holds
        async def chunks():
            for _ in range(17):
                yield b" " * (64 * 1024)
            yield encoded

        check(
            await http.post(url, content=chunks(), headers=bearer(secret) | {"Content-Type": "application/json"}),
            413,
            "body_too_large",
        )

        # a chunked body under the limit, read over several ASGI messages, arrives whole
        async def pieces():
            padded = json.dumps({**good, "pad": "x" * (24 * 1024)}).encode()
            for start in range(0, len(padded), 4 * 1024):
                yield padded[start : start + 4 * 1024]

        response = await http.post(url, content=pieces(), headers=bearer(secret) | {"Content-Type": "application/json"})
        assert response.status_code == 202, response.text
        chunked_fire_id = f"{webhook.name}@{response.json()['event_id']}"

        # event types: only the accepted ones
        check(
            await http.post(url, json={"type": "order.refunded"}, headers=bearer(secret)),
            422,
            "event_type_not_accepted",
        )
        check(await http.post(url, json={"order": 17}, headers=bearer(secret)), 422, "event_type_not_accepted")
        check(await http.post(url, json=[1, 2], headers=bearer(secret)), 422, "event_type_not_accepted")

        # a body just under the limit, with a +json media type, is accepted and runs
        padding = MAX_BODY - len(b'{"type": "order.paid", "pad": ""}') - 1024
        large = {"type": "order.paid", "pad": "y" * padding}
        accepted = await http.post(
            url,
            content=json.dumps(large).encode(),
            headers=bearer(secret) | {"Content-Type": "application/cloudevents+json; charset=utf-8"},
        )
        assert accepted.status_code == 202, accepted.text
        fire_ids = [chunked_fire_id, f"{webhook.name}@{accepted.json()['event_id']}"]
        # a body of exactly the limit runs: the nats-server's max payload leaves room for the fire around it
        skeleton = b'{"type": "order.paid", "pad": ""}'
        exact = skeleton[:-2] + b"z" * (MAX_BODY - len(skeleton)) + b'"}'
        assert len(exact) == MAX_BODY
        at_limit = await post(exact)
        assert at_limit.status_code == 202, at_limit.text
        fire_ids.append(f"{webhook.name}@{at_limit.json()['event_id']}")
        for fire_id in fire_ids:
            await traces.run_ended(fire_id)

        # nothing refused became a run; runs carrying a 1 MiB body come a page each (a page stays under 3 MiB)
        runs, token, pages = [], "", 0
        while pages == 0 or token:
            page = await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger.name, page_token=token))
            runs.extend(page.runs)
            token, pages = page.next_page_token, pages + 1
        assert sorted(r.fire_id for r in runs) == sorted(fire_ids)
        assert pages > 1
        assert {e.fire_id for e in traces.events} == set(fire_ids)


async def test_shared_secret_mode_and_health(suite) -> None:
    key = await suite.new_workspace("shared")
    async with (
        suite.client(key) as kairos,
        traces_of(suite, "shared") as traces,
        httpx.AsyncClient(timeout=10) as http,
    ):
        trigger = (
            await kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger()))
        ).trigger
        webhook, secret = await create_webhook(
            kairos, trigger.name, auth_mode=Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER
        )
        assert webhook.auth_mode == Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER
        assert [s.hint for s in webhook.secrets] == [secret[-4:]]
        url = hook_url(suite, webhook)
        body = {"event": "ticket.opened", "id": 9}

        accepted = await http.post(url, json=body, headers={"X-Trigger-Secret": secret})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["status"] == "accepted"
        ended = await traces.run_ended(f"{webhook.name}@{accepted.json()['event_id']}")
        run = (await kairos.runs.GetRun(run_service_pb2.GetRunRequest(name=ended.run))).run
        assert json_format.MessageToDict(run.payload) == body and run.event_type == "ticket.opened"

        for headers, error in (
            ({"X-Trigger-Secret": secret + "x"}, "invalid_credentials"),
            ({}, "missing_credentials"),
            (bearer(secret), "missing_credentials"),
        ):
            refused = await http.post(url, json=body, headers=headers)
            assert refused.status_code == 401 and refused.json()["error"] == error, (headers, refused.text)

        empty = await http.post(url, json=body, headers={"X-Trigger-Secret": ""})
        assert empty.status_code == 401

        # a bearer webhook of the same trigger does not accept the shared-secret header
        bearer_hook, bearer_secret = await create_webhook(kairos, trigger.name)
        refused = await http.post(hook_url(suite, bearer_hook), json=body, headers={"X-Trigger-Secret": bearer_secret})
        assert refused.status_code == 401

        base = suite.webhooks_url.removesuffix("/hooks/")
        health = await http.get(f"{base}/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        ready = await http.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        wrong_method = await http.get(url)
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert wrong_method.json()["error"] == "method_not_allowed"
        assert (await http.post(f"{base}/healthz")).headers["allow"] == "GET, HEAD"
        for path in ("/hooks/", "/hooks", "/nowhere", f"/hooks/{webhook.name.rsplit('/', 1)[1]}/extra"):
            unknown = await http.post(f"{base}{path}", json=body, headers={"X-Trigger-Secret": secret})
            assert unknown.status_code == 404 and unknown.json()["error"] == "not_found", (path, unknown.text)
