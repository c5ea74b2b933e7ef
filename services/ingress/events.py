"""Platform events: every active event trigger of the workspace whose event type and filter match fires once.

Events arrive two ways: `EventService.PublishEvent` (gRPC) and NATS messages on
`kairos.events.<workspace>.<event_type>` (stream KAIROS_EVENTS), read by one durable consumer that all ingress
replicas share. The fire id is `<trigger>@event:<event id>`, so a repeated event fires nothing new. The event
types a workspace uses are recorded (KV `kairos_event_types`) for ListEventTypes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
import orjson
import structlog
from google.protobuf import json_format, struct_pb2
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from kairos.core import messaging
from kairos.core.auth import workspace_for
from kairos.core.errors import invalid_argument, unavailable
from kairos.core.feed import KvMirror
from kairos.core.names import EVENT_TYPE, EVENT_TYPE_RULE, WORKSPACE_ID, new_id
from kairos.core.tasks import cancel_and_wait, spawn
from kairos.ingress.endpoint import TRIGGER_ACTIVE, event_id_of, lookup_path
from kairos.v1 import event_service_pb2, event_service_pb2_grpc, fire_pb2, run_pb2, trigger_pb2

log = structlog.get_logger(__name__)

BUILTIN_EVENT_TYPES = {
    "thread.created": "A conversation thread was created.",
    "thread.member_joined": "A member joined a thread.",
    "email.received": "An email arrived in a connected inbox.",
    "connector.connected": "A connector finished connecting.",
    "run.completed": "A run of an agent completed.",
    "run.failed": "A run of an agent failed.",
}
MAX_EVENT_BYTES = 1 << 20
EVENTS_CONSUMER = "kairos-ingress-events"
FETCH_BATCH = 64
FETCH_WAIT_S = 1.0
RETRY_DELAY_S = 1.0  # before the first redelivery of an event not fired; doubled for each later one
MAX_RETRY_DELAY_S = 60.0
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


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


def fires_on(trigger: trigger_pb2.Trigger, data: Any) -> bool:
    """Whether an event trigger (of the event's workspace and type: `EventTriggers.of`) fires on an event's data."""
    return trigger.state == TRIGGER_ACTIVE and all(
        condition_holds(condition, data) for condition in trigger.source.event.filter
    )


class EventTypeCatalog:
    """The event types each workspace has used, mirrored from KV (`<workspace>.<hex of the type>`)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._used: dict[str, set[str]] = {}
        self.mirror: KvMirror[event_service_pb2.EventType] = KvMirror(
            kv, event_service_pb2.EventType, on_change=self._on_change
        )

    @staticmethod
    def key(workspace: str, event_type: str) -> str:
        return f"{workspace}.{event_type.encode().hex()}"

    def _on_change(self, key: str, value: event_service_pb2.EventType | None) -> None:
        workspace, _, encoded = key.partition(".")
        used = self._used.setdefault(workspace, set())
        event_type = bytes.fromhex(encoded).decode()
        if value is None:
            used.discard(event_type)
        else:
            used.add(event_type)

    async def record(self, workspace: str, event_type: str) -> None:
        if event_type not in self._used.get(workspace, ()):
            key = self.key(workspace, event_type)
            await self._kv.put(key, event_service_pb2.EventType(type=event_type).SerializeToString())

    def used_by(self, workspace: str) -> set[str]:
        return set(self._used.get(workspace, ()))


class EventTriggers:
    """The event triggers of the trigger mirror by workspace and event type, kept by the mirror's change callback
    (`on_change`, keys `<workspace>.<trigger id>`): an event looks only at the triggers of its type in its
    workspace. It once looked at every trigger of every workspace, ~54 ms of the ingress's event loop per event
    with 100,000 triggers, during which no webhook was answered."""

    def __init__(self) -> None:
        self._by_type: dict[tuple[str, str], dict[str, trigger_pb2.Trigger]] = {}
        self._type_of: dict[str, tuple[str, str]] = {}  # mirror key -> (workspace, event type)

    def on_change(self, key: str, value: trigger_pb2.Trigger | None) -> None:
        indexed = self._type_of.pop(key, None)
        if indexed is not None:
            triggers = self._by_type[indexed]
            del triggers[key]
            if not triggers:
                del self._by_type[indexed]
        if value is not None and value.source.HasField("event"):
            indexed = (key.partition(".")[0], value.source.event.event_type)
            self._by_type.setdefault(indexed, {})[key] = value
            self._type_of[key] = indexed

    def of(self, workspace: str, event_type: str) -> list[trigger_pb2.Trigger]:
        return list(self._by_type.get((workspace, event_type), {}).values())

    def types_of(self, workspace: str) -> set[str]:
        """The event types the workspace's event triggers wait for."""
        return {event_type for indexed_workspace, event_type in self._by_type if indexed_workspace == workspace}


class EventFirer:
    """Fires the matching triggers of one event; raises when JetStream does not take a fire."""

    def __init__(self, js: JetStreamContext, triggers: EventTriggers, catalog: EventTypeCatalog) -> None:
        self._js = js
        self.triggers = triggers
        self.catalog = catalog

    async def fire(self, workspace: str, event_type: str, event_id: str, data: Any) -> list[str]:
        triggers = [trigger for trigger in self.triggers.of(workspace, event_type) if fires_on(trigger, data)]
        fires = []
        if triggers:
            payload = struct_pb2.Value()
            json_format.ParseDict({"trigger": event_type, "payload": data}, payload)
            for trigger in triggers:
                fire = fire_pb2.FireRequest(
                    fire_id=f"{trigger.name}@event:{event_id}",
                    trigger=trigger.name,
                    trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_EVENT,
                    action=trigger.action,
                    policies=trigger.policies,
                    event_type=event_type,
                    trigger_revision=trigger.revision,
                    payload=payload,
                )
                fire.fire_time.GetCurrentTime()
                fires.append(fire)
        # Published together (one event may fire many triggers, and each ack is a round trip); a failure is raised
        # once every publish has ended, and the redelivered event publishes them all again (same Msg-Ids: no repeat).
        results = await asyncio.gather(
            *(
                messaging.publish_fire(
                    self._js,
                    messaging.fire_subject(workspace, fire.trigger.rsplit("/", 1)[1]),
                    fire.SerializeToString(),
                    fire.fire_id,
                )
                for fire in fires
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await self.catalog.record(workspace, event_type)
        return [fire.fire_id for fire in fires]


class EventConsumer:
    """Reads `kairos.events.>` with a durable pull consumer shared by all ingress replicas; each event is
    acknowledged once all its fires are stored, and redelivered after a delay when one is not."""

    def __init__(self, js: JetStreamContext, firer: EventFirer) -> None:
        self._js = js
        self._firer = firer
        self._task: asyncio.Task | None = None
        self._subscription = None

    async def start(self) -> None:
        subscription = await self._js.pull_subscribe(
            messaging.EVENTS_SUBJECTS,
            durable=EVENTS_CONSUMER,
            stream=messaging.EVENTS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW, ack_wait=30, max_ack_pending=1000
            ),
        )
        self._subscription = subscription
        self._task = spawn(self._consume(subscription), "ingress-events")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._subscription is not None:
            # Unsubscribed here, so draining the connection does not wait on an interrupted fetch.
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def _consume(self, subscription) -> None:
        while True:
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
            except nats.errors.TimeoutError:
                continue
            except Exception as error:
                log.warning("platform events unreadable; retrying", error=str(error))
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            for message in messages:
                await self._handle(message)

    async def _handle(self, message) -> None:
        """Fires an event's triggers and acknowledges it; drops (terminates) an event that can never fire, and
        redelivers one that failed for a reason that may pass, later each time (nothing is dropped for an outage)."""
        tokens = message.subject.split(".")
        workspace, event_type = tokens[2] if len(tokens) > 3 else "", ".".join(tokens[3:])
        if not WORKSPACE_ID.match(workspace) or not event_type:
            await self._drop(message, "the subject names no workspace id and event type")
            return
        if not EVENT_TYPE.match(event_type):
            await self._drop(message, f"the event type {EVENT_TYPE_RULE}: no trigger can name this one")
            return
        try:
            data = orjson.loads(message.data) if message.data else {}
        except orjson.JSONDecodeError:
            await self._drop(message, "the payload is not JSON")
            return
        headers = message.headers or {}
        event_id = headers.get(messaging.MSG_ID_HEADER) or f"seq{message.metadata.sequence.stream}"
        try:
            await self._firer.fire(workspace, event_type, event_id_of(event_id), data)
        except nats.errors.MaxPayloadError:
            await self._drop(message, "a fire of it would exceed the NATS max payload")
            return
        except Exception as error:
            delay = min(MAX_RETRY_DELAY_S, RETRY_DELAY_S * 2 ** (message.metadata.num_delivered - 1))
            log.warning(
                "platform event not fired; redelivering", subject=message.subject, error=str(error), delay_s=delay
            )
            with contextlib.suppress(Exception):
                await message.nak(delay=delay)
            return
        await message.ack()

    @staticmethod
    async def _drop(message, reason: str) -> None:
        log.warning("platform event dropped", reason=reason, subject=message.subject)
        with contextlib.suppress(Exception):
            await message.term()


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    def __init__(self, firer: EventFirer) -> None:
        self._firer = firer

    async def PublishEvent(self, request, context):
        workspace = workspace_for(request.parent)
        if not EVENT_TYPE.match(request.event_type):
            raise invalid_argument("INVALID_EVENT_TYPE", "event_type", EVENT_TYPE_RULE)
        if request.data.ByteSize() > MAX_EVENT_BYTES:
            raise invalid_argument("EVENT_TOO_LARGE", "data", f"must be at most {MAX_EVENT_BYTES} bytes")
        if len(request.event_id) > 200:
            raise invalid_argument("INVALID_EVENT_ID", "event_id", "must be at most 200 characters")
        event_id = request.event_id or new_id("evt")
        data = json_format.MessageToDict(request.data)
        try:
            fire_ids = await self._firer.fire(workspace, request.event_type, event_id, data)
        except nats.errors.MaxPayloadError:
            too_large = "a fire of it would exceed the NATS max payload"
            raise invalid_argument("EVENT_TOO_LARGE", "data", too_large) from None
        except Exception as error:
            raise unavailable("EVENT_NOT_ACCEPTED", f"the event could not be queued, retry: {error}") from error
        return event_service_pb2.PublishEventResponse(event_id=event_id, fire_ids=fire_ids)

    async def ListEventTypes(self, request, context):
        workspace = workspace_for(request.parent)
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise invalid_argument("INVALID_PAGE_SIZE", "page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        size = request.page_size or DEFAULT_PAGE_SIZE
        catalog = {event_type: (description, True) for event_type, description in BUILTIN_EVENT_TYPES.items()}
        for event_type in self._firer.catalog.used_by(workspace):
            catalog.setdefault(event_type, ("", False))
        for event_type in self._firer.triggers.types_of(workspace):
            catalog.setdefault(event_type, ("", False))
        ordered = [event_type for event_type in sorted(catalog) if event_type > request.page_token]
        page = ordered[:size]
        types = [
            event_service_pb2.EventType(
                type=event_type, description=catalog[event_type][0], builtin=catalog[event_type][1]
            )
            for event_type in page
        ]
        next_token = page[-1] if len(ordered) > size else ""
        return event_service_pb2.ListEventTypesResponse(event_types=types, next_page_token=next_token)
