"""Thin gRPC servicers: translate protobuf requests to registry domain calls, scoped to the caller."""

from __future__ import annotations

from datetime import UTC, datetime

from kairos.core.auth import check_workspace, principal, require_admin, workspace_for
from kairos.core.errors import invalid_argument
from kairos.core.names import parse_trigger, parse_webhook, parse_workspace
from kairos.core.schedule import compile_schedule
from kairos.registry.triggers import TriggerRegistry, timestamp
from kairos.registry.webhooks import WebhookRegistry
from kairos.registry.workspaces import WorkspaceRegistry
from kairos.v1 import (
    trigger_pb2,
    trigger_service_pb2,
    trigger_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)

MAX_PREVIEW = 1000


def _trigger_name(name: str, field: str = "name"):
    parsed = parse_trigger(name, field)
    check_workspace(parsed.workspace, name)
    return parsed


def _webhook_name(name: str, field: str = "name"):
    parsed = parse_webhook(name, field)
    check_workspace(parsed.workspace, name)
    return parsed


def _upcoming(instant, name, schedule) -> trigger_service_pb2.UpcomingRun:
    return trigger_service_pb2.UpcomingRun(
        trigger=name,
        fire_time=timestamp(instant),
        local_time=schedule.local_time(instant),
        timezone=schedule.timezone,
        description=schedule.description,
    )


class TriggerServicer(trigger_service_pb2_grpc.TriggerServiceServicer):
    def __init__(self, triggers: TriggerRegistry) -> None:
        self._triggers = triggers

    async def CreateTrigger(self, request, context):
        workspace = workspace_for(request.parent)
        trigger = await self._triggers.create(workspace, request.trigger, request.request_id)
        return trigger_service_pb2.CreateTriggerResponse(trigger=trigger)

    async def GetTrigger(self, request, context):
        trigger = await self._triggers.get(_trigger_name(request.name))
        return trigger_service_pb2.GetTriggerResponse(trigger=trigger)

    async def ListTriggers(self, request, context):
        triggers, token = await self._triggers.list(workspace_for(request.parent), request)
        return trigger_service_pb2.ListTriggersResponse(triggers=triggers, next_page_token=token)

    async def UpdateTrigger(self, request, context):
        name = _trigger_name(request.trigger.name, "trigger.name")
        trigger = await self._triggers.update(name, request.trigger, request.update_mask)
        return trigger_service_pb2.UpdateTriggerResponse(trigger=trigger)

    async def DeleteTrigger(self, request, context):
        await self._triggers.delete(_trigger_name(request.name), request.etag)
        return trigger_service_pb2.DeleteTriggerResponse()

    async def PauseTrigger(self, request, context):
        note = request.note or f"paused by {principal().key_name}"
        trigger = await self._triggers.set_state(
            _trigger_name(request.name), trigger_pb2.TriggerState.TRIGGER_STATE_PAUSED, note
        )
        return trigger_service_pb2.PauseTriggerResponse(trigger=trigger)

    async def ResumeTrigger(self, request, context):
        trigger = await self._triggers.set_state(
            _trigger_name(request.name), trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE, request.note
        )
        return trigger_service_pb2.ResumeTriggerResponse(trigger=trigger)

    async def FireTrigger(self, request, context):
        fire_id = await self._triggers.fire(_trigger_name(request.name), request)
        return trigger_service_pb2.FireTriggerResponse(fire_id=fire_id)

    async def ListUpcomingRuns(self, request, context):
        if request.page_size < 0:
            raise invalid_argument("INVALID_PAGE_SIZE", "page_size", "must not be negative")
        count = min(request.page_size or 10, MAX_PREVIEW)
        end = request.end_time.ToDatetime(UTC) if request.HasField("end_time") else None
        if "/triggers/" in request.parent:
            trigger = _trigger_name(request.parent, "parent")
            workspace = trigger.workspace
        else:
            trigger, workspace = None, workspace_for(request.parent)
        fires = await self._triggers.upcoming(workspace, trigger, count, end)
        return trigger_service_pb2.ListUpcomingRunsResponse(upcoming_runs=[_upcoming(*fire) for fire in fires])

    async def PreviewSchedule(self, request, context):
        if not 0 <= request.count <= MAX_PREVIEW:
            raise invalid_argument("INVALID_COUNT", "count", f"must be between 0 and {MAX_PREVIEW}")
        principal()
        start = request.start_time.ToDatetime(UTC) if request.HasField("start_time") else datetime.now(UTC)
        schedule = compile_schedule(request.schedule, anchor=start, field_prefix="schedule")
        runs = []
        instant = schedule.next_fire_after(start)
        while instant is not None and len(runs) < (request.count or 10):
            runs.append(_upcoming(instant, "", schedule))
            instant = schedule.next_fire_after(instant)
        return trigger_service_pb2.PreviewScheduleResponse(schedule=schedule.to_proto(), upcoming_runs=runs)


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    def __init__(self, webhooks: WebhookRegistry) -> None:
        self._webhooks = webhooks

    async def CreateWebhook(self, request, context):
        webhook, secret = await self._webhooks.create(
            workspace_for(request.parent), request.webhook, request.request_id
        )
        return webhook_service_pb2.CreateWebhookResponse(webhook=webhook, secret=secret)

    async def GetWebhook(self, request, context):
        return webhook_service_pb2.GetWebhookResponse(webhook=await self._webhooks.get(_webhook_name(request.name)))

    async def ListWebhooks(self, request, context):
        webhooks, token = await self._webhooks.list(
            workspace_for(request.parent), request.page_size, request.page_token, request.trigger
        )
        return webhook_service_pb2.ListWebhooksResponse(webhooks=webhooks, next_page_token=token)

    async def UpdateWebhook(self, request, context):
        name = _webhook_name(request.webhook.name, "webhook.name")
        webhook = await self._webhooks.update(name, request.webhook, request.update_mask)
        return webhook_service_pb2.UpdateWebhookResponse(webhook=webhook)

    async def DeleteWebhook(self, request, context):
        await self._webhooks.delete(_webhook_name(request.name))
        return webhook_service_pb2.DeleteWebhookResponse()

    async def RotateWebhookSecret(self, request, context):
        webhook, secret = await self._webhooks.rotate(_webhook_name(request.name), request.grace_period)
        return webhook_service_pb2.RotateWebhookSecretResponse(webhook=webhook, secret=secret)


class WorkspaceServicer(workspace_service_pb2_grpc.WorkspaceServiceServicer):
    def __init__(self, workspaces: WorkspaceRegistry) -> None:
        self._workspaces = workspaces

    async def CreateWorkspace(self, request, context):
        require_admin()
        return workspace_service_pb2.CreateWorkspaceResponse(
            workspace=await self._workspaces.create_workspace(request.workspace)
        )

    async def GetWorkspace(self, request, context):
        workspace = parse_workspace(request.name, "name")
        check_workspace(workspace, request.name)
        return workspace_service_pb2.GetWorkspaceResponse(workspace=await self._workspaces.get_workspace(workspace))

    async def ListWorkspaces(self, request, context):
        require_admin()
        workspaces, token = await self._workspaces.list_workspaces(request.page_size, request.page_token)
        return workspace_service_pb2.ListWorkspacesResponse(workspaces=workspaces, next_page_token=token)

    async def UpdateWorkspace(self, request, context):
        workspace = parse_workspace(request.workspace.name, "workspace.name")
        check_workspace(workspace, request.workspace.name)
        if any(path.startswith("quota") for path in request.update_mask.paths):
            require_admin()
        updated = await self._workspaces.update_workspace(workspace, request.workspace, request.update_mask)
        return workspace_service_pb2.UpdateWorkspaceResponse(workspace=updated)

    async def CreateApiKey(self, request, context):
        api_key, key = await self._workspaces.create_api_key(workspace_for(request.parent), request.api_key)
        return workspace_service_pb2.CreateApiKeyResponse(api_key=api_key, key=key)

    async def ListApiKeys(self, request, context):
        keys, token = await self._workspaces.list_api_keys(
            workspace_for(request.parent), request.page_size, request.page_token
        )
        return workspace_service_pb2.ListApiKeysResponse(api_keys=keys, next_page_token=token)

    async def DeleteApiKey(self, request, context):
        parts = request.name.split("/")
        if len(parts) != 4 or parts[2] != "apiKeys":
            raise invalid_argument(
                "INVALID_RESOURCE_NAME", "name", "must look like workspaces/{workspace}/apiKeys/{api_key}"
            )
        workspace = parse_workspace("/".join(parts[:2]), "name")
        check_workspace(workspace, request.name)
        await self._workspaces.delete_api_key(workspace, parts[3])
        return workspace_service_pb2.DeleteApiKeyResponse()

    async def RotateSigningSecret(self, request, context):
        secret = await self._workspaces.rotate_signing_secret(workspace_for(request.name, "name"), request.grace_period)
        return workspace_service_pb2.RotateSigningSecretResponse(signing_secret=secret)
