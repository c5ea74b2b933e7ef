"""EventService: platform events fire every matching event trigger of the workspace, each exactly once."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from nats.js import JetStreamContext

from kairos.core import messaging
from kairos.core.auth import workspace_for
from kairos.core.errors import invalid_argument, unavailable
from kairos.core.feed import KvMirror
from kairos.core.names import new_id
from kairos.ingress.endpoint import lookup_path
from kairos.v1 import event_service_pb2, event_service_pb2_grpc, fire_pb2, run_pb2, trigger_pb2

BUILTIN_EVENT_TYPES = {
    "thread.created": "A conversation thread was created.",
    "thread.member_joined": "A member joined a thread.",
    "email.received": "An email arrived in a connected inbox.",
    "connector.connected": "A connector finished connecting.",
    "run.completed": "A run of an agent completed.",
    "run.failed": "A run of an agent failed.",
}
MAX_EVENT_BYTES = 1 << 20


def condition_holds(condition: trigger_pb2.FieldCondition, data: Any) -> bool:
    found, value = lookup_path(data, condition.path)
    test = condition.WhichOneof("test")
    if test == "exists":
        return found == condition.exists
    if not found:
        return False
    if test == "equals":
        return value == json_format.MessageToDict(condition.equals)
    return value in json_format.MessageToDict(getattr(condition, "in"))


def matches(trigger: trigger_pb2.Trigger, workspace: str, event_type: str, data: Any) -> bool:
    return (
        trigger.state == trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE
        and trigger.source.HasField("event")
        and trigger.source.event.event_type == event_type
        and trigger.name.startswith(f"workspaces/{workspace}/")
        and all(condition_holds(condition, data) for condition in trigger.source.event.filter)
    )


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    def __init__(self, js: JetStreamContext, triggers: KvMirror[trigger_pb2.Trigger]) -> None:
        self._js = js
        self._triggers = triggers

    async def PublishEvent(self, request, context):
        workspace = workspace_for(request.parent)
        if not request.event_type or len(request.event_type) > 200:
            raise invalid_argument("INVALID_EVENT_TYPE", "event_type", "must be 1 to 200 characters")
        if request.data.ByteSize() > MAX_EVENT_BYTES:
            raise invalid_argument("EVENT_TOO_LARGE", "data", f"must be at most {MAX_EVENT_BYTES} bytes")
        if len(request.event_id) > 200:
            raise invalid_argument("INVALID_EVENT_ID", "event_id", "must be at most 200 characters")
        event_id = request.event_id or new_id("evt")
        data = json_format.MessageToDict(request.data)
        fire_ids = []
        for trigger in self._triggers.values():
            if not matches(trigger, workspace, request.event_type, data):
                continue
            fire = fire_pb2.FireRequest(
                fire_id=f"{trigger.name}@event:{event_id}",
                trigger=trigger.name,
                trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_EVENT,
                action=trigger.action,
                policies=trigger.policies,
                event_type=request.event_type,
                trigger_revision=trigger.revision,
            )
            fire.fire_time.GetCurrentTime()
            json_format.ParseDict({"trigger": request.event_type, "payload": data}, fire.payload)
            trigger_id = trigger.name.rsplit("/", 1)[1]
            try:
                await messaging.publish_fire(
                    self._js,
                    messaging.fire_subject(workspace, trigger_id),
                    fire.SerializeToString(),
                    fire.fire_id,
                )
            except Exception as error:
                raise unavailable("EVENT_NOT_ACCEPTED", f"the event could not be queued, retry: {error}") from error
            fire_ids.append(fire.fire_id)
        return event_service_pb2.PublishEventResponse(event_id=event_id, fire_ids=fire_ids)

    async def ListEventTypes(self, request, context):
        workspace = workspace_for(request.parent)
        catalog = {event_type: (description, True) for event_type, description in BUILTIN_EVENT_TYPES.items()}
        for trigger in self._triggers.values():
            if trigger.source.HasField("event") and trigger.name.startswith(f"workspaces/{workspace}/"):
                catalog.setdefault(trigger.source.event.event_type, ("", False))
        types = [
            event_service_pb2.EventType(type=event_type, description=description, builtin=builtin)
            for event_type, (description, builtin) in sorted(catalog.items())
        ]
        return event_service_pb2.ListEventTypesResponse(event_types=types)
