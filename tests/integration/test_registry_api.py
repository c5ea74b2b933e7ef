"""The registry's gRPC API end to end: TriggerService, WebhookService and WorkspaceService called with workspace
API keys against the whole suite running in-process (real gRPC, real NATS, SQLite and PostgreSQL).

Covers schedule triggers (cron with a time zone, interval, one-shot) and their computed next fire time,
request-id idempotency, pagination and filters, updates with field masks and etags, pause/resume, delete,
workspace isolation, authentication, rich INVALID_ARGUMENT errors, quotas, webhook secrets and their rotation
as the ingress sees them over HTTP, manual fires that become runs, upcoming runs and schedule previews.

Waits synchronise on events (trace events on NATS, changes applied by the ingress's change-feed mirror),
each bounded by `asyncio.timeout`; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2, timestamp_pb2

from kairos.client import KairosClient, error_details, event_trigger, schedule_trigger, webhook_trigger
from kairos.client.builders import action
from kairos.devtools.suite import traces_of
from kairos.v1 import (
    feed_pb2,
    run_pb2,
    run_service_pb2,
    trigger_pb2,
    trigger_service_pb2,
    webhook_pb2,
    webhook_service_pb2,
    workspace_pb2,
    workspace_service_pb2,
)

FEED_TIMEOUT_S = 5.0
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS_AT_NINE = "0 9 * * 1-5"

State = trigger_pb2.TriggerState
Kind = trigger_pb2.SourceKind
Code = grpc.StatusCode


# ------------------------------------------------------------------------------------------------ helpers


def now() -> datetime:
    return datetime.now(UTC)


def stamp(instant: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(instant)
    return result


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def next_weekday_at_nine(after: datetime, zone: ZoneInfo = NEW_YORK) -> datetime:
    """The first 09:00 wall-clock time on a Monday-Friday in `zone` strictly after `after`, in UTC."""
    day = after.astimezone(zone).date()
    while True:
        candidate = datetime.combine(day, time(9, 0), tzinfo=zone)
        if candidate.weekday() < 5 and candidate > after:
            return candidate.astimezone(UTC)
        day += timedelta(days=1)


def weekday_nines(after: datetime, count: int) -> list[datetime]:
    result = []
    while len(result) < count:
        after = next_weekday_at_nine(after)
        result.append(after)
    return result


async def expect_error(call, code: grpc.StatusCode, reason: str = "", field: str = ""):
    """Awaits a call that must fail with `code` (and, when given, the ErrorInfo reason and a field violation)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    details = error_details(raised.value)
    assert details.code == code, details
    if reason:
        assert details.reason == reason, details
    if field:
        assert field in details.field_violations, details
    return details


async def create_trigger(kairos: KairosClient, trigger: trigger_pb2.Trigger, request_id: str = "", parent: str = ""):
    response = await kairos.triggers.CreateTrigger(
        trigger_service_pb2.CreateTriggerRequest(parent=parent, trigger=trigger, request_id=request_id)
    )
    return response.trigger


async def get_trigger(kairos: KairosClient, name: str) -> trigger_pb2.Trigger:
    return (await kairos.triggers.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=name))).trigger


async def list_all(kairos: KairosClient, **filters: Any) -> list[trigger_pb2.Trigger]:
    triggers, token = [], ""
    while True:
        page = await kairos.triggers.ListTriggers(
            trigger_service_pb2.ListTriggersRequest(page_token=token, page_size=100, **filters)
        )
        triggers.extend(page.triggers)
        token = page.next_page_token
        if not token:
            return triggers


async def new_workspace_with_quota(suite, workspace: str, quota: workspace_pb2.WorkspaceQuota) -> tuple[Any, str]:
    """Creates a workspace with a quota through the admin API; returns it and an API key for it."""
    async with suite.client(suite.admin_key) as admin:
        created = await admin.workspaces.CreateWorkspace(
            workspace_service_pb2.CreateWorkspaceRequest(
                workspace=workspace_pb2.Workspace(name=f"workspaces/{workspace}", quota=quota)
            )
        )
        key = await admin.workspaces.CreateApiKey(
            workspace_service_pb2.CreateApiKeyRequest(parent=f"workspaces/{workspace}")
        )
    return created.workspace, key.key


class IngressWebhooks:
    """Waits until the ingress's mirror of the webhooks change feed holds a change: the registry answers once
    the change is on the feed, the ingress applies it a moment later."""

    def __init__(self, suite, webhook_id: str) -> None:
        self._mirror = suite.runtime.extras["ingress.webhooks"]
        self._webhook_id = webhook_id

    async def wait_until(self, predicate: Callable[[feed_pb2.WebhookRecord], bool]) -> None:
        async with asyncio.timeout(FEED_TIMEOUT_S):
            await self._mirror.wait_until(self._webhook_id, lambda record: record is not None and predicate(record))


async def post_hook(http: httpx.AsyncClient, suite, webhook: webhook_pb2.Webhook, secret: str, body=None):
    webhook_id = webhook.name.rsplit("/", 1)[1]
    return await http.post(
        f"{suite.webhooks_url}{webhook_id}",
        json=body if body is not None else {"type": "ping"},
        headers={"Authorization": f"Bearer {secret}"},
    )


# ------------------------------------------------------------------------------------------------ tests


async def test_schedule_triggers_create_get_update_pause_resume_delete(suite) -> None:
    key = await suite.new_workspace("acme")
    async with suite.client(key) as kairos:
        # cron in a time zone: next fire at 09:00 New York time on a weekday
        before = now()
        cron = await create_trigger(
            kairos,
            schedule_trigger(
                cron=WEEKDAYS_AT_NINE, timezone="America/New_York", display_name="standup", prompt="Summarize"
            ),
            parent="workspaces/acme",
        )
        assert cron.name.startswith("workspaces/acme/triggers/")
        assert (cron.state, cron.revision) == (State.TRIGGER_STATE_ACTIVE, 1)
        assert cron.etag
        got = await get_trigger(kairos, cron.name)
        after = now()
        assert got.display_name == "standup"
        assert got.source.schedule.timezone == "America/New_York"
        assert got.source.schedule.cron.expression == WEEKDAYS_AT_NINE
        assert got.source.schedule.cron.canonical_expression == WEEKDAYS_AT_NINE
        assert got.source.schedule.cron.description == "At 09:00 AM, Monday through Friday"
        assert got.HasField("create_time") and got.HasField("update_time")
        assert got.info.HasField("next_fire_time")
        next_fire = got.info.next_fire_time.ToDatetime(UTC)
        assert next_fire in (next_weekday_at_nine(before), next_weekday_at_nine(after))
        local = next_fire.astimezone(NEW_YORK)
        assert (local.hour, local.minute, local.second, local.weekday() < 5) == (9, 0, 0, True)

        # a macro is evaluated in its canonical form
        hourly = await create_trigger(kairos, schedule_trigger(cron="@hourly"))
        assert hourly.source.schedule.cron.canonical_expression == "0 * * * *"
        assert hourly.source.schedule.cron.description == "Every hour"
        hourly_next = hourly.info.next_fire_time.ToDatetime(UTC)
        assert hourly_next.minute == hourly_next.second == 0 and timedelta(0) < hourly_next - before <= timedelta(
            hours=1
        )

        # interval: the first fire is one period after creation
        interval = await create_trigger(kairos, schedule_trigger(every=timedelta(hours=1)))
        interval = await get_trigger(kairos, interval.name)
        assert interval.source.schedule.interval.every.seconds == 3600
        assert interval.info.next_fire_time.ToDatetime(UTC) == interval.create_time.ToDatetime(UTC) + timedelta(hours=1)

        # one-shot: fires at its instant
        at = (now() + timedelta(days=2)).replace(microsecond=0)
        one_shot = await create_trigger(kairos, schedule_trigger(at=at, timezone="Europe/Paris"))
        assert (await get_trigger(kairos, one_shot.name)).info.next_fire_time.ToDatetime(UTC) == at

        # request_id: a repeat returns the first trigger, even with a different body
        first = await create_trigger(kairos, schedule_trigger(cron="0 8 * * *", display_name="first"), "req-42")
        again = await create_trigger(kairos, schedule_trigger(cron="5 5 * * *", display_name="second"), "req-42")
        assert again.name == first.name
        assert again.display_name == "first" and again.source.schedule.cron.expression == "0 8 * * *"
        listed = [t.name for t in await list_all(kairos)]
        assert listed.count(first.name) == 1
        assert sorted(listed) == sorted([cron.name, hourly.name, interval.name, one_shot.name, first.name])

        # update with a mask: only the named field changes; revision and etag move on
        updated = (
            await kairos.triggers.UpdateTrigger(
                trigger_service_pb2.UpdateTriggerRequest(
                    trigger=trigger_pb2.Trigger(
                        name=cron.name,
                        etag=got.etag,
                        display_name="ignored: not in the mask",
                        action=trigger_pb2.Action(prompt="Summarize yesterday"),
                    ),
                    update_mask=mask("action.prompt"),
                )
            )
        ).trigger
        assert updated.revision == 2 and updated.etag != got.etag
        assert updated.action.prompt == "Summarize yesterday"
        assert updated.display_name == "standup"
        assert updated.action.agent == got.action.agent
        assert updated.action.runner == got.action.runner
        assert updated.source == got.source
        stored = await get_trigger(kairos, cron.name)
        assert (stored.revision, stored.etag, stored.action.prompt) == (2, updated.etag, "Summarize yesterday")
        assert stored.update_time.ToDatetime(UTC) > got.update_time.ToDatetime(UTC)

        # a stale etag is ABORTED and changes nothing
        stale = trigger_pb2.Trigger(name=cron.name, etag=got.etag, action=trigger_pb2.Action(prompt="lost update"))
        await expect_error(
            kairos.triggers.UpdateTrigger(
                trigger_service_pb2.UpdateTriggerRequest(trigger=stale, update_mask=mask("action.prompt"))
            ),
            Code.ABORTED,
            "ETAG_MISMATCH",
        )
        await expect_error(
            kairos.triggers.DeleteTrigger(trigger_service_pb2.DeleteTriggerRequest(name=cron.name, etag=got.etag)),
            Code.ABORTED,
            "ETAG_MISMATCH",
        )
        # a mask naming a field that cannot be updated is INVALID_ARGUMENT
        for path in ("state", "name", "info.fire_count", "revision", "create_time", "no_such_field"):
            await expect_error(
                kairos.triggers.UpdateTrigger(
                    trigger_service_pb2.UpdateTriggerRequest(
                        trigger=trigger_pb2.Trigger(name=cron.name, state=State.TRIGGER_STATE_PAUSED),
                        update_mask=mask(path),
                    )
                ),
                Code.INVALID_ARGUMENT,
                "INVALID_UPDATE_MASK",
                "update_mask",
            )
        unchanged = await get_trigger(kairos, cron.name)
        assert (unchanged.revision, unchanged.action.prompt) == (2, "Summarize yesterday")
        assert unchanged.state == State.TRIGGER_STATE_ACTIVE

        # the schedule can be replaced; the next fire time follows it
        paris = trigger_pb2.Trigger(name=cron.name)
        paris.source.schedule.cron.expression = "@daily"
        paris.source.schedule.timezone = "Europe/Paris"
        rescheduled = (
            await kairos.triggers.UpdateTrigger(
                trigger_service_pb2.UpdateTriggerRequest(trigger=paris, update_mask=mask("source.schedule"))
            )
        ).trigger
        assert rescheduled.revision == 3
        assert rescheduled.source.schedule.cron.canonical_expression == "0 0 * * *"
        midnight = rescheduled.info.next_fire_time.ToDatetime(UTC).astimezone(ZoneInfo("Europe/Paris"))
        assert (midnight.hour, midnight.minute) == (0, 0)
        assert timedelta(0) < midnight - now() <= timedelta(days=1)

        # pause keeps the note and drops the next fire time; resume brings it back
        paused = (
            await kairos.triggers.PauseTrigger(
                trigger_service_pb2.PauseTriggerRequest(name=cron.name, note="deploy freeze (sam)")
            )
        ).trigger
        assert paused.state == State.TRIGGER_STATE_PAUSED and paused.state_note == "deploy freeze (sam)"
        assert not paused.info.HasField("next_fire_time")
        paused = await get_trigger(kairos, cron.name)
        assert paused.state == State.TRIGGER_STATE_PAUSED and paused.state_note == "deploy freeze (sam)"
        assert not paused.info.HasField("next_fire_time")
        assert [t.name for t in await list_all(kairos, state=State.TRIGGER_STATE_PAUSED)] == [cron.name]
        resumed = (
            await kairos.triggers.ResumeTrigger(trigger_service_pb2.ResumeTriggerRequest(name=cron.name))
        ).trigger
        assert resumed.state == State.TRIGGER_STATE_ACTIVE and resumed.revision == paused.revision + 1
        assert resumed.info.HasField("next_fire_time")
        assert (await get_trigger(kairos, cron.name)).info.next_fire_time == resumed.info.next_fire_time
        # a pause without a note records who paused it
        paused = (await kairos.triggers.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(name=hourly.name))).trigger
        assert paused.state_note.startswith("paused by workspaces/acme/apiKeys/")

        # delete: gone for Get, List, Update and a second Delete
        await kairos.triggers.DeleteTrigger(trigger_service_pb2.DeleteTriggerRequest(name=cron.name))
        await expect_error(
            kairos.triggers.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=cron.name)), Code.NOT_FOUND
        )
        await expect_error(
            kairos.triggers.DeleteTrigger(trigger_service_pb2.DeleteTriggerRequest(name=cron.name)), Code.NOT_FOUND
        )
        await expect_error(
            kairos.triggers.UpdateTrigger(
                trigger_service_pb2.UpdateTriggerRequest(
                    trigger=trigger_pb2.Trigger(name=cron.name, display_name="x"), update_mask=mask("display_name")
                )
            ),
            Code.NOT_FOUND,
        )
        assert cron.name not in [t.name for t in await list_all(kairos)]


async def test_list_triggers_pagination_and_filters(suite) -> None:
    key = await suite.new_workspace("pager")
    async with suite.client(key) as kairos:
        created = [
            await create_trigger(kairos, schedule_trigger(every=timedelta(hours=1 + i), display_name=f"t{i}"))
            for i in range(5)
        ]
        pages, token = [], ""
        while True:
            page = await kairos.triggers.ListTriggers(
                trigger_service_pb2.ListTriggersRequest(parent="workspaces/pager", page_size=2, page_token=token)
            )
            pages.append([t.name for t in page.triggers])
            token = page.next_page_token
            if not token:
                break
            assert len(pages) < 5, "pagination does not end"
        assert [len(page) for page in pages] == [2, 2, 1]
        names = [name for page in pages for name in page]
        assert len(set(names)) == 5
        assert names == [t.name for t in reversed(created)], "newest first"
        # listed triggers carry their computed info
        page = await kairos.triggers.ListTriggers(trigger_service_pb2.ListTriggersRequest(page_size=1))
        assert page.triggers[0].name == created[-1].name and page.triggers[0].info.HasField("next_fire_time")

        # filters: state, source kind, agent, and their combination, with pagination
        await kairos.triggers.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(name=created[1].name))
        hook = await create_trigger(kairos, webhook_trigger(agent="agents/other"))
        event = await create_trigger(kairos, event_trigger("thread.created", agent="agents/other"))
        assert [t.name for t in await list_all(kairos, state=State.TRIGGER_STATE_PAUSED)] == [created[1].name]
        active = await list_all(kairos, state=State.TRIGGER_STATE_ACTIVE)
        assert [t.name for t in active] == [event.name, hook.name] + [
            t.name for t in reversed(created) if t != created[1]
        ]
        assert [t.name for t in await list_all(kairos, source_kind=Kind.SOURCE_KIND_WEBHOOK)] == [hook.name]
        assert [t.name for t in await list_all(kairos, source_kind=Kind.SOURCE_KIND_EVENT)] == [event.name]
        assert [t.name for t in await list_all(kairos, agent="agents/other")] == [event.name, hook.name]
        assert await list_all(kairos, agent="agents/nobody") == []
        both = await list_all(kairos, state=State.TRIGGER_STATE_ACTIVE, source_kind=Kind.SOURCE_KIND_SCHEDULE)
        assert len(both) == 4 and created[1].name not in [t.name for t in both]
        schedule_pages, token = [], ""
        while True:
            page = await kairos.triggers.ListTriggers(
                trigger_service_pb2.ListTriggersRequest(
                    source_kind=Kind.SOURCE_KIND_SCHEDULE, page_size=2, page_token=token
                )
            )
            schedule_pages.append([t.name for t in page.triggers])
            token = page.next_page_token
            if not token:
                break
        assert [name for page in schedule_pages for name in page] == [t.name for t in reversed(created)]


async def test_workspace_isolation_and_authentication(suite) -> None:
    key_a = await suite.new_workspace("team-a")
    key_b = await suite.new_workspace("team-b")
    async with suite.client(key_a) as a, suite.client(key_b) as b:
        trigger = await create_trigger(a, webhook_trigger(display_name="a's"))
        schedule = await create_trigger(a, schedule_trigger(cron="0 9 * * *"))
        webhook = (
            await a.webhooks.CreateWebhook(
                webhook_service_pb2.CreateWebhookRequest(webhook=webhook_pb2.Webhook(trigger=trigger.name))
            )
        ).webhook
        own = await create_trigger(b, schedule_trigger(cron="0 10 * * *"))
        missing_in_b = own.name.rsplit("/", 1)[0] + "/t_doesnotexist"

        not_found = [
            b.triggers.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=trigger.name)),
            b.triggers.UpdateTrigger(
                trigger_service_pb2.UpdateTriggerRequest(
                    trigger=trigger_pb2.Trigger(name=trigger.name, display_name="b was here"),
                    update_mask=mask("display_name"),
                )
            ),
            b.triggers.DeleteTrigger(trigger_service_pb2.DeleteTriggerRequest(name=trigger.name)),
            b.triggers.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(name=schedule.name)),
            b.triggers.ResumeTrigger(trigger_service_pb2.ResumeTriggerRequest(name=schedule.name)),
            b.triggers.FireTrigger(trigger_service_pb2.FireTriggerRequest(name=trigger.name)),
            b.triggers.ListTriggers(trigger_service_pb2.ListTriggersRequest(parent="workspaces/team-a")),
            b.triggers.ListUpcomingRuns(trigger_service_pb2.ListUpcomingRunsRequest(parent=schedule.name)),
            b.triggers.ListUpcomingRuns(trigger_service_pb2.ListUpcomingRunsRequest(parent="workspaces/team-a")),
            b.webhooks.GetWebhook(webhook_service_pb2.GetWebhookRequest(name=webhook.name)),
            b.webhooks.UpdateWebhook(
                webhook_service_pb2.UpdateWebhookRequest(
                    webhook=webhook_pb2.Webhook(name=webhook.name, disabled=True), update_mask=mask("disabled")
                )
            ),
            b.webhooks.RotateWebhookSecret(webhook_service_pb2.RotateWebhookSecretRequest(name=webhook.name)),
            b.webhooks.DeleteWebhook(webhook_service_pb2.DeleteWebhookRequest(name=webhook.name)),
            b.webhooks.ListWebhooks(webhook_service_pb2.ListWebhooksRequest(parent="workspaces/team-a")),
            b.webhooks.CreateWebhook(
                webhook_service_pb2.CreateWebhookRequest(webhook=webhook_pb2.Webhook(trigger=trigger.name))
            ),
            b.triggers.CreateTrigger(
                trigger_service_pb2.CreateTriggerRequest(parent="workspaces/team-a", trigger=webhook_trigger())
            ),
            b.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger.name)),
            b.workspaces.GetWorkspace(workspace_service_pb2.GetWorkspaceRequest(name="workspaces/team-a")),
        ]
        # A's ids under B's own workspace name: the id alone must not reach another workspace's resource
        swapped = trigger.name.replace("workspaces/team-a/", "workspaces/team-b/")
        swapped_schedule = schedule.name.replace("workspaces/team-a/", "workspaces/team-b/")
        swapped_webhook = webhook.name.replace("workspaces/team-a/", "workspaces/team-b/")
        not_found += [
            b.triggers.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=swapped)),
            b.triggers.UpdateTrigger(
                trigger_service_pb2.UpdateTriggerRequest(
                    trigger=trigger_pb2.Trigger(name=swapped, display_name="b was here"),
                    update_mask=mask("display_name"),
                )
            ),
            b.triggers.DeleteTrigger(trigger_service_pb2.DeleteTriggerRequest(name=swapped)),
            b.triggers.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(name=swapped_schedule)),
            b.triggers.FireTrigger(trigger_service_pb2.FireTriggerRequest(name=swapped)),
            b.triggers.ListUpcomingRuns(trigger_service_pb2.ListUpcomingRunsRequest(parent=swapped_schedule)),
            b.webhooks.GetWebhook(webhook_service_pb2.GetWebhookRequest(name=swapped_webhook)),
            b.webhooks.UpdateWebhook(
                webhook_service_pb2.UpdateWebhookRequest(
                    webhook=webhook_pb2.Webhook(name=swapped_webhook, disabled=True), update_mask=mask("disabled")
                )
            ),
            b.webhooks.RotateWebhookSecret(webhook_service_pb2.RotateWebhookSecretRequest(name=swapped_webhook)),
            b.webhooks.DeleteWebhook(webhook_service_pb2.DeleteWebhookRequest(name=swapped_webhook)),
            b.webhooks.CreateWebhook(
                webhook_service_pb2.CreateWebhookRequest(webhook=webhook_pb2.Webhook(trigger=swapped))
            ),
        ]
        messages = []
        for call in not_found:
            messages.append((await expect_error(call, Code.NOT_FOUND)).message)
        # another workspace's trigger is exactly as absent as a trigger that does not exist
        own_missing = await expect_error(
            b.triggers.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=missing_in_b)), Code.NOT_FOUND
        )
        assert messages[0] == own_missing.message.replace(missing_in_b, trigger.name)

        assert [t.name for t in await list_all(b)] == [own.name]
        assert [t.name for t in await list_all(b, parent="workspaces/-")] == [own.name]
        listed_b = await b.webhooks.ListWebhooks(webhook_service_pb2.ListWebhooksRequest())
        assert list(listed_b.webhooks) == []
        # nothing B tried changed A's resources
        after = await get_trigger(a, trigger.name)
        assert (after.revision, after.display_name, after.state) == (
            trigger.revision,
            "a's",
            State.TRIGGER_STATE_ACTIVE,
        )
        assert list(after.source.webhook.webhooks) == [webhook.name]
        assert (await get_trigger(a, schedule.name)).state == State.TRIGGER_STATE_ACTIVE
        still = (await a.webhooks.GetWebhook(webhook_service_pb2.GetWebhookRequest(name=webhook.name))).webhook
        assert not still.disabled and len(still.secrets) == 1
        assert sorted(t.name for t in await list_all(a)) == sorted([trigger.name, schedule.name])

        # authentication: no key, an unknown key, a tampered key; a workspace key is not an admin key
        bad_keys = [
            "",
            "kairos_unknown_c2VjcmV0",
            key_a[:-4] + ("AAAA" if not key_a.endswith("AAAA") else "BBBB"),
            "nonsense",
        ]
        for bad_key in bad_keys:
            async with KairosClient(suite.address, bad_key) as anonymous:
                await expect_error(
                    anonymous.triggers.ListTriggers(
                        trigger_service_pb2.ListTriggersRequest(parent="workspaces/team-a")
                    ),
                    Code.UNAUTHENTICATED,
                )
                await expect_error(
                    anonymous.triggers.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=trigger.name)),
                    Code.UNAUTHENTICATED,
                )
        for admin_only in (
            a.workspaces.CreateWorkspace(
                workspace_service_pb2.CreateWorkspaceRequest(workspace=workspace_pb2.Workspace(name="workspaces/mine"))
            ),
            a.workspaces.ListWorkspaces(workspace_service_pb2.ListWorkspacesRequest()),
        ):
            await expect_error(admin_only, Code.PERMISSION_DENIED, "PERMISSION_DENIED")
        async with suite.client(suite.admin_key) as admin:
            workspaces = await admin.workspaces.ListWorkspaces(workspace_service_pb2.ListWorkspacesRequest())
        assert "workspaces/mine" not in [w.name for w in workspaces.workspaces]


async def test_invalid_arguments_name_the_field(suite) -> None:
    key = await suite.new_workspace("strict")
    async with suite.client(key) as kairos:
        hook = await create_trigger(kairos, webhook_trigger())

        zero_interval = schedule_trigger(every=timedelta(hours=1))
        zero_interval.source.schedule.interval.every.seconds = 0
        backwards = schedule_trigger(every=timedelta(hours=1))
        backwards.source.schedule.interval.start_time.CopyFrom(stamp(now() + timedelta(days=2)))
        backwards.source.schedule.interval.end_time.CopyFrom(stamp(now() + timedelta(days=1)))
        no_source = trigger_pb2.Trigger(action=action())
        no_runner = webhook_trigger()
        no_runner.action.ClearField("runner")
        # a runner kind this server does not know (field 9 of Runner, from a newer client)
        unknown_runner = webhook_trigger()
        unknown_runner.action.runner.CopyFrom(trigger_pb2.Runner.FromString(b"\x4a\x00"))
        oversize = webhook_trigger(input_template={"blob": "x" * (64 * 1024 + 1)})

        cases = [
            (schedule_trigger(cron="61 * * * *"), "INVALID_CRON_EXPRESSION", "trigger.source.schedule.cron.expression"),
            (schedule_trigger(cron="every day"), "INVALID_CRON_EXPRESSION", "trigger.source.schedule.cron.expression"),
            (
                schedule_trigger(cron="0 9 * * *", timezone="Mars/Olympus_Mons"),
                "UNKNOWN_TIME_ZONE",
                "trigger.source.schedule.timezone",
            ),
            (zero_interval, "INVALID_INTERVAL", "trigger.source.schedule.interval.every"),
            (backwards, "INVALID_TIME_RANGE", "trigger.source.schedule.interval.end_time"),
            (no_source, "MISSING_SOURCE", "trigger.source"),
            (no_runner, "UNKNOWN_RUNNER", "trigger.action.runner"),
            (unknown_runner, "UNKNOWN_RUNNER", "trigger.action.runner"),
            (
                webhook_trigger(entry_point="not a module path"),
                "INVALID_ENTRY_POINT",
                "trigger.action.runner.python.entry_point",
            ),
            (
                webhook_trigger(entry_point="kairos.agents.demo"),
                "INVALID_ENTRY_POINT",
                "trigger.action.runner.python.entry_point",
            ),
            (oversize, "TEMPLATE_TOO_LARGE", "trigger.action.input_template"),
            (webhook_trigger(agent="demo"), "INVALID_AGENT", "trigger.action.agent"),
        ]
        for trigger, reason, field in cases:
            await expect_error(
                kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=trigger)),
                Code.INVALID_ARGUMENT,
                reason,
                field,
            )
        # an update is validated like a create
        bad_update = trigger_pb2.Trigger(name=hook.name)
        bad_update.action.runner.python.entry_point = "no-colon"
        await expect_error(
            kairos.triggers.UpdateTrigger(
                trigger_service_pb2.UpdateTriggerRequest(trigger=bad_update, update_mask=mask("action.runner"))
            ),
            Code.INVALID_ARGUMENT,
            "INVALID_ENTRY_POINT",
            "trigger.action.runner.python.entry_point",
        )
        # a template just under the limit is fine
        large = await create_trigger(kairos, webhook_trigger(input_template={"blob": "x" * 60_000}))
        assert len(large.action.input_template["blob"]) == 60_000

        for mapping in ({"contact/phone": "phone_to"}, {"contact..phone": "phone_to"}, {"$.contact": "phone_to"}):
            await expect_error(
                kairos.webhooks.CreateWebhook(
                    webhook_service_pb2.CreateWebhookRequest(
                        webhook=webhook_pb2.Webhook(trigger=hook.name, field_mapping=mapping)
                    )
                ),
                Code.INVALID_ARGUMENT,
                "INVALID_FIELD_PATH",
                "webhook.field_mapping",
            )
        tampered = base64.urlsafe_b64encode(b"not-a-time\x1ft_x").decode()
        for token in ("not-a-token", "%%%", base64.urlsafe_b64encode(b"one-part").decode(), tampered):
            await expect_error(
                kairos.triggers.ListTriggers(trigger_service_pb2.ListTriggersRequest(page_token=token)),
                Code.INVALID_ARGUMENT,
                "INVALID_PAGE_TOKEN",
                "page_token",
            )
        await expect_error(
            kairos.webhooks.ListWebhooks(webhook_service_pb2.ListWebhooksRequest(page_token="not-a-token")),
            Code.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
            "page_token",
        )
        bad_preview = trigger_pb2.ScheduleSource(timezone="UTC")
        bad_preview.cron.expression = "* * *"
        await expect_error(
            kairos.triggers.PreviewSchedule(trigger_service_pb2.PreviewScheduleRequest(schedule=bad_preview)),
            Code.INVALID_ARGUMENT,
            "INVALID_CRON_EXPRESSION",
            "schedule.cron.expression",
        )
        # nothing rejected was created
        assert sorted(t.name for t in await list_all(kairos)) == sorted([hook.name, large.name])
        listed = await kairos.webhooks.ListWebhooks(webhook_service_pb2.ListWebhooksRequest())
        assert list(listed.webhooks) == []


async def test_quota_limits_schedule_triggers(suite) -> None:
    workspace, key = await new_workspace_with_quota(
        suite, "small", workspace_pb2.WorkspaceQuota(max_schedule_triggers=2, max_webhook_event_triggers=1)
    )
    assert workspace.quota.max_schedule_triggers == 2
    async with suite.client(key) as kairos:
        assert (
            await kairos.workspaces.GetWorkspace(workspace_service_pb2.GetWorkspaceRequest(name=workspace.name))
        ).workspace.quota.max_schedule_triggers == 2
        first = await create_trigger(kairos, schedule_trigger(cron="0 1 * * *"))
        await create_trigger(kairos, schedule_trigger(every=timedelta(hours=3)))
        details = await expect_error(
            kairos.triggers.CreateTrigger(
                trigger_service_pb2.CreateTriggerRequest(trigger=schedule_trigger(cron="0 2 * * *"))
            ),
            Code.RESOURCE_EXHAUSTED,
            "TRIGGER_LIMIT_EXCEEDED",
        )
        assert details.metadata["count"] == "2" and details.metadata["limit"] == "2"
        assert details.metadata["kind"] == "schedule"
        # the other kinds have their own limit
        await create_trigger(kairos, webhook_trigger())
        details = await expect_error(
            kairos.triggers.CreateTrigger(
                trigger_service_pb2.CreateTriggerRequest(trigger=event_trigger("thread.created"))
            ),
            Code.RESOURCE_EXHAUSTED,
            "TRIGGER_LIMIT_EXCEEDED",
        )
        assert (details.metadata["count"], details.metadata["limit"]) == ("1", "1")
        # a deleted trigger frees its slot
        await kairos.triggers.DeleteTrigger(trigger_service_pb2.DeleteTriggerRequest(name=first.name))
        await create_trigger(kairos, schedule_trigger(cron="0 2 * * *"))
        assert len(await list_all(kairos, source_kind=Kind.SOURCE_KIND_SCHEDULE)) == 2


async def test_concurrent_creates_never_pass_the_last_free_slot_together(suite) -> None:
    """Many creates racing for one slot: exactly one wins, every other is TRIGGER_LIMIT_EXCEEDED, and the
    workspace holds exactly as many triggers as its quota (on PostgreSQL the workspace row lock decides)."""
    racers = 8
    _, key = await new_workspace_with_quota(suite, "race", workspace_pb2.WorkspaceQuota(max_schedule_triggers=2))
    async with suite.client(key) as kairos:
        await create_trigger(kairos, schedule_trigger(cron="0 1 * * *"))
        outcomes = await asyncio.gather(
            *(create_trigger(kairos, schedule_trigger(cron=f"{minute} 2 * * *")) for minute in range(racers)),
            return_exceptions=True,
        )
        created = [outcome for outcome in outcomes if isinstance(outcome, trigger_pb2.Trigger)]
        refused = [error_details(outcome) for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)]
        assert len(created) == 1, outcomes
        assert len(refused) == racers - 1, outcomes
        assert {(details.code, details.reason) for details in refused} == {
            (Code.RESOURCE_EXHAUSTED, "TRIGGER_LIMIT_EXCEEDED")
        }
        assert len(await list_all(kairos, source_kind=Kind.SOURCE_KIND_SCHEDULE)) == 2


async def test_concurrent_creates_each_get_their_own_outcome(suite) -> None:
    """Creates arriving together (on SQLite they share one transaction): a rejected one does not undo the others,
    and every create with one request_id answers with the same trigger."""
    _, key = await new_workspace_with_quota(suite, "together", workspace_pb2.WorkspaceQuota(max_schedule_triggers=9))
    async with suite.client(key) as kairos:
        calls = []
        for index in range(6):
            calls.append(create_trigger(kairos, schedule_trigger(cron=f"{index} 3 * * *")))
            calls.append(create_trigger(kairos, schedule_trigger(cron=f"{index} 4 * * *"), request_id="same"))
            calls.append(create_trigger(kairos, schedule_trigger(cron="61 * * * *")))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        distinct, repeated, invalid = outcomes[0::3], outcomes[1::3], outcomes[2::3]
        assert all(isinstance(outcome, trigger_pb2.Trigger) for outcome in distinct + repeated), outcomes
        assert len({trigger.name for trigger in distinct}) == 6
        assert len({trigger.name for trigger in repeated}) == 1
        assert {(error_details(error).code, error_details(error).reason) for error in invalid} == {
            (Code.INVALID_ARGUMENT, "INVALID_CRON_EXPRESSION")
        }
        listed = {trigger.name for trigger in await list_all(kairos)}
        assert listed == {trigger.name for trigger in distinct + repeated}
        for trigger in distinct + repeated:
            assert (await get_trigger(kairos, trigger.name)).etag == "1"


async def test_webhook_secrets_rotation_and_disable(suite) -> None:
    key = await suite.new_workspace("hooks")
    async with suite.client(key) as kairos, httpx.AsyncClient(timeout=10) as http:
        trigger = await create_trigger(kairos, webhook_trigger())
        schedule = await create_trigger(kairos, schedule_trigger(cron="0 9 * * *"))
        await expect_error(
            kairos.webhooks.CreateWebhook(
                webhook_service_pb2.CreateWebhookRequest(webhook=webhook_pb2.Webhook(trigger=schedule.name))
            ),
            Code.INVALID_ARGUMENT,
            "TRIGGER_NOT_WEBHOOK",
            "webhook.trigger",
        )

        created = await kairos.webhooks.CreateWebhook(
            webhook_service_pb2.CreateWebhookRequest(
                webhook=webhook_pb2.Webhook(trigger=trigger.name, display_name="crm"), request_id="hook-1"
            )
        )
        webhook, secret = created.webhook, created.secret
        webhook_id = webhook.name.rsplit("/", 1)[1]
        assert webhook.name.startswith("workspaces/hooks/webhooks/") and webhook.path == f"/hooks/{webhook_id}"
        assert webhook.auth_mode == webhook_pb2.WebhookAuthMode.WEBHOOK_AUTH_MODE_BEARER_TOKEN
        assert len(secret) >= 32
        assert [s.hint for s in webhook.secrets] == [secret[-4:]]
        assert (await get_trigger(kairos, trigger.name)).source.webhook.webhooks == [webhook.name]
        # the secret is shown once: never by Get or List, and a repeated request_id does not show it again
        fetched = (await kairos.webhooks.GetWebhook(webhook_service_pb2.GetWebhookRequest(name=webhook.name))).webhook
        listed = await kairos.webhooks.ListWebhooks(webhook_service_pb2.ListWebhooksRequest(trigger=trigger.name))
        for shown in (fetched, listed.webhooks[0]):
            assert secret.encode() not in shown.SerializeToString()
            assert [s.hint for s in shown.secrets] == [secret[-4:]]
        await expect_error(
            kairos.webhooks.CreateWebhook(
                webhook_service_pb2.CreateWebhookRequest(
                    webhook=webhook_pb2.Webhook(trigger=trigger.name), request_id="hook-1"
                )
            ),
            Code.ABORTED,
            "ALREADY_CREATED",
        )

        assert (await post_hook(http, suite, webhook, secret)).status_code == 202
        assert (await post_hook(http, suite, webhook, secret + "x")).status_code == 401
        ingress = IngressWebhooks(suite, webhook_id)

        # rotation with a grace period: the old secret stays valid beside the new one
        started = now()
        rotated = await kairos.webhooks.RotateWebhookSecret(
            webhook_service_pb2.RotateWebhookSecretRequest(
                name=webhook.name, grace_period=duration_pb2.Duration(seconds=3600)
            )
        )
        second = rotated.secret
        assert second != secret and second[-4:] == rotated.webhook.secrets[-1].hint
        assert [s.hint for s in rotated.webhook.secrets] == [secret[-4:], second[-4:]]
        old, new = rotated.webhook.secrets
        assert old.HasField("expire_time") and not new.HasField("expire_time")
        expiry = old.expire_time.ToDatetime(UTC)
        assert started + timedelta(hours=1) <= expiry <= now() + timedelta(hours=1)
        ids = {s.id for s in rotated.webhook.secrets}
        await ingress.wait_until(lambda record: {c.id for c in record.credentials} == ids)
        assert (await post_hook(http, suite, webhook, secret)).status_code == 202
        assert (await post_hook(http, suite, webhook, second)).status_code == 202
        fetched = (await kairos.webhooks.GetWebhook(webhook_service_pb2.GetWebhookRequest(name=webhook.name))).webhook
        assert second.encode() not in fetched.SerializeToString() and len(fetched.secrets) == 2

        # rotation without grace: every earlier secret is refused at once, only the new one works
        revoked = await kairos.webhooks.RotateWebhookSecret(
            webhook_service_pb2.RotateWebhookSecretRequest(name=webhook.name)
        )
        third = revoked.secret
        assert [s.hint for s in revoked.webhook.secrets] == [third[-4:]]
        ids = {s.id for s in revoked.webhook.secrets}
        await ingress.wait_until(lambda record: {c.id for c in record.credentials} == ids)
        assert (await post_hook(http, suite, webhook, secret)).status_code == 401
        assert (await post_hook(http, suite, webhook, second)).status_code == 401
        assert (await post_hook(http, suite, webhook, third)).status_code == 202

        # a disabled webhook answers 403 to a valid secret; enabling it again restores 202
        disabled = (
            await kairos.webhooks.UpdateWebhook(
                webhook_service_pb2.UpdateWebhookRequest(
                    webhook=webhook_pb2.Webhook(name=webhook.name, disabled=True, display_name="not in mask"),
                    update_mask=mask("disabled"),
                )
            )
        ).webhook
        assert disabled.disabled and disabled.display_name == "crm"
        await ingress.wait_until(lambda record: record.webhook.disabled)
        refused = await post_hook(http, suite, webhook, third)
        assert refused.status_code == 403 and refused.json()["error"] == "webhook_disabled"
        await expect_error(
            kairos.webhooks.UpdateWebhook(
                webhook_service_pb2.UpdateWebhookRequest(
                    webhook=webhook_pb2.Webhook(name=webhook.name, trigger=schedule.name), update_mask=mask("trigger")
                )
            ),
            Code.INVALID_ARGUMENT,
            "INVALID_UPDATE_MASK",
            "update_mask",
        )
        await kairos.webhooks.UpdateWebhook(
            webhook_service_pb2.UpdateWebhookRequest(
                webhook=webhook_pb2.Webhook(name=webhook.name, disabled=False), update_mask=mask("disabled")
            )
        )
        await ingress.wait_until(lambda record: not record.webhook.disabled)
        assert (await post_hook(http, suite, webhook, third)).status_code == 202


async def test_manual_fire_runs_with_merged_input(suite) -> None:
    key = await suite.new_workspace("manual")
    async with suite.client(key) as kairos, traces_of(suite, "manual") as traces:
        trigger = await create_trigger(
            kairos,
            schedule_trigger(
                cron="0 0 1 1 *",
                prompt="Say hello",
                input_template={"greeting": "hello", "name": "template", "nested": {"keep": True}},
            ),
        )
        fired = await kairos.triggers.FireTrigger(
            trigger_service_pb2.FireTriggerRequest(name=trigger.name, input=struct({"name": "override", "extra": 7}))
        )
        assert fired.fire_id.startswith(f"{trigger.name}@")
        ended = await traces.run_ended(fired.fire_id)
        assert ended.trigger == trigger.name and ended.run.startswith(f"{trigger.name}/runs/")
        run = (await kairos.runs.GetRun(run_service_pb2.GetRunRequest(name=ended.run))).run
        assert run.status == run_pb2.RunStatus.RUN_STATUS_COMPLETED
        assert run.trigger_type == run_pb2.TriggerType.TRIGGER_TYPE_MANUAL
        assert (run.fire_id, run.trigger, run.agent) == (fired.fire_id, trigger.name, "agents/demo")
        expected_input = {
            "greeting": "hello",
            "name": "override",
            "nested": {"keep": True},
            "extra": 7,
            "prompt": "Say hello",
        }
        assert json_format.MessageToDict(run.input) == expected_input
        output = json_format.MessageToDict(run.output)
        assert output["echo"] == expected_input and output["trigger_type"] == "manual"
        assert not run.HasField("scheduled_time")
        started = await traces.wait_for(lambda e: e.fire_id == fired.fire_id and e.type == "run.started")
        assert started.run == ended.run

        # a request_id makes the fire idempotent: one fire id, one run
        request = trigger_service_pb2.FireTriggerRequest(name=trigger.name, request_id="nightly-backfill-1")
        repeated = [(await kairos.triggers.FireTrigger(request)).fire_id for _ in range(2)]
        assert repeated[0] == repeated[1] == f"{trigger.name}@manual:nightly-backfill-1"
        last = await kairos.triggers.FireTrigger(trigger_service_pb2.FireTriggerRequest(name=trigger.name))
        await traces.run_ended(repeated[0])
        await traces.run_ended(last.fire_id)
        runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger.name))).runs
        assert sorted(r.fire_id for r in runs) == sorted([fired.fire_id, repeated[0], last.fire_id])
        # firing ignores the state: a paused trigger still fires on request
        await kairos.triggers.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(name=trigger.name))
        paused_fire = await kairos.triggers.FireTrigger(trigger_service_pb2.FireTriggerRequest(name=trigger.name))
        await traces.run_ended(paused_fire.fire_id)
        await expect_error(
            kairos.triggers.FireTrigger(
                trigger_service_pb2.FireTriggerRequest(name=trigger.name.rsplit("/", 1)[0] + "/t_gone")
            ),
            Code.NOT_FOUND,
        )


async def test_a_draft_has_no_next_fire_until_activated(suite) -> None:
    key = await suite.new_workspace("drafts")
    async with suite.client(key) as kairos:
        draft_config = schedule_trigger(cron="*/5 * * * *")
        draft_config.state = State.TRIGGER_STATE_DRAFT
        draft = await create_trigger(kairos, draft_config)
        assert draft.state == State.TRIGGER_STATE_DRAFT and not draft.info.HasField("next_fire_time")
        assert not (await get_trigger(kairos, draft.name)).info.HasField("next_fire_time")
        workspace_upcoming = await kairos.triggers.ListUpcomingRuns(
            trigger_service_pb2.ListUpcomingRunsRequest(parent="workspaces/drafts", page_size=5)
        )
        assert list(workspace_upcoming.upcoming_runs) == []

        activated = (
            await kairos.triggers.ResumeTrigger(trigger_service_pb2.ResumeTriggerRequest(name=draft.name))
        ).trigger
        assert activated.state == State.TRIGGER_STATE_ACTIVE and activated.info.HasField("next_fire_time")
        workspace_upcoming = await kairos.triggers.ListUpcomingRuns(
            trigger_service_pb2.ListUpcomingRunsRequest(parent="workspaces/drafts", page_size=5)
        )
        assert [run.trigger for run in workspace_upcoming.upcoming_runs] == [draft.name] * 5


async def test_upcoming_runs_and_schedule_preview(suite) -> None:
    key = await suite.new_workspace("planner")
    async with suite.client(key) as kairos:
        cron = await create_trigger(kairos, schedule_trigger(cron=WEEKDAYS_AT_NINE, timezone="America/New_York"))
        interval = await create_trigger(kairos, schedule_trigger(every=timedelta(hours=7)))
        await create_trigger(kairos, webhook_trigger())

        before = now()
        upcoming = (
            await kairos.triggers.ListUpcomingRuns(
                trigger_service_pb2.ListUpcomingRunsRequest(parent=cron.name, page_size=5)
            )
        ).upcoming_runs
        after = now()
        assert len(upcoming) == 5
        instants = [u.fire_time.ToDatetime(UTC) for u in upcoming]
        assert instants in (weekday_nines(before, 5), weekday_nines(after, 5))
        for run, instant in zip(upcoming, instants, strict=True):
            assert run.trigger == cron.name and run.timezone == "America/New_York"
            assert run.description == "At 09:00 AM, Monday through Friday (America/New_York)"
            local = datetime.fromisoformat(run.local_time)
            assert local == instant and local.utcoffset() == instant.astimezone(NEW_YORK).utcoffset()
            assert (local.hour, local.minute) == (9, 0)
            assert run.local_time.endswith(("-05:00", "-04:00"))

        # the whole workspace: every active schedule trigger, merged in ascending order, up to end_time
        end = now() + timedelta(days=8)
        merged = (
            await kairos.triggers.ListUpcomingRuns(
                trigger_service_pb2.ListUpcomingRunsRequest(page_size=1000, end_time=stamp(end))
            )
        ).upcoming_runs
        times = [u.fire_time.ToDatetime(UTC) for u in merged]
        assert times == sorted(times) and all(t < end for t in times)
        by_trigger = {name: [u for u in merged if u.trigger == name] for name in (cron.name, interval.name)}
        assert set(u.trigger for u in merged) == {cron.name, interval.name}
        assert len(by_trigger[cron.name]) in range(5, 8)
        start = interval.create_time.ToDatetime(UTC)
        expected_interval = [
            start + timedelta(hours=7 * i) for i in range(1, 40) if start + timedelta(hours=7 * i) < end
        ]
        assert [u.fire_time.ToDatetime(UTC) for u in by_trigger[interval.name]] == expected_interval
        assert by_trigger[interval.name][0].description == "Every 7 hours (UTC)"
        limited = (
            await kairos.triggers.ListUpcomingRuns(trigger_service_pb2.ListUpcomingRunsRequest(page_size=3))
        ).upcoming_runs
        assert [u.fire_time for u in limited] == [u.fire_time for u in merged[:3]]
        # a paused trigger has no upcoming runs
        await kairos.triggers.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(name=interval.name))
        merged = (
            await kairos.triggers.ListUpcomingRuns(trigger_service_pb2.ListUpcomingRunsRequest(page_size=50))
        ).upcoming_runs
        assert {u.trigger for u in merged} == {cron.name}

        # preview: validates and computes, creates nothing
        triggers_before = sorted(t.name for t in await list_all(kairos))
        schedule = trigger_pb2.ScheduleSource(timezone="Asia/Kolkata")
        schedule.cron.expression = "*/15 * * * *"
        preview = await kairos.triggers.PreviewSchedule(
            trigger_service_pb2.PreviewScheduleRequest(
                schedule=schedule, count=5, start_time=stamp(datetime(2030, 1, 1, 0, 7, tzinfo=UTC))
            )
        )
        assert preview.schedule.cron.canonical_expression == "*/15 * * * *"
        assert preview.schedule.cron.description == "Every 15 minutes"
        assert [u.fire_time.ToDatetime(UTC) for u in preview.upcoming_runs] == [
            datetime(2030, 1, 1, 0, 15, tzinfo=UTC) + timedelta(minutes=15 * i) for i in range(5)
        ]
        assert preview.upcoming_runs[0].local_time == "2030-01-01T05:45:00+05:30"
        assert all(u.description == "Every 15 minutes (Asia/Kolkata)" for u in preview.upcoming_runs)
        assert all(u.trigger == "" for u in preview.upcoming_runs)
        # a bounded interval yields fewer fire times than asked for
        bounded = trigger_pb2.ScheduleSource()
        bounded.interval.every.seconds = 3600
        bounded.interval.start_time.CopyFrom(stamp(datetime(2030, 1, 1, tzinfo=UTC)))
        bounded.interval.end_time.CopyFrom(stamp(datetime(2030, 1, 1, 3, tzinfo=UTC)))
        preview = await kairos.triggers.PreviewSchedule(
            trigger_service_pb2.PreviewScheduleRequest(
                schedule=bounded, count=10, start_time=stamp(datetime(2029, 12, 31, 23, tzinfo=UTC))
            )
        )
        assert [u.fire_time.ToDatetime(UTC) for u in preview.upcoming_runs] == [
            datetime(2030, 1, 1, hour, tzinfo=UTC) for hour in range(3)
        ]
        assert sorted(t.name for t in await list_all(kairos)) == triggers_before
