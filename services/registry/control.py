"""NATS request/reply control subjects the registry serves for other Kairos services.

`kairos.control.registry.pause_trigger` takes JSON `{"trigger": "workspaces/{ws}/triggers/{t}", "note": "..."}`
(the executor sends it after `pause_after_failures` failed runs in a row) and pauses the trigger through
the registry's normal path, so the change feed carries it. The reply is `{"trigger": name, "state": "PAUSED"}`
or `{"error": REASON, "message": "..."}`. Registry replicas share the subject as one queue group.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import structlog
from nats.aio.msg import Msg

from kairos.core.errors import KairosError
from kairos.core.names import parse_trigger
from kairos.core.runtime import Runtime
from kairos.registry.triggers import TriggerRegistry
from kairos.v1 import trigger_pb2

log = structlog.get_logger(__name__)

PAUSE_SUBJECT = "kairos.control.registry.pause_trigger"
QUEUE = "kairos-registry-control"


async def start(stack: AsyncExitStack, runtime: Runtime, triggers: TriggerRegistry) -> None:
    async def pause(message: Msg) -> None:
        try:
            request = json.loads(message.data)
            if not isinstance(request, dict):
                raise ValueError("the request must be a JSON object")
            name = parse_trigger(str(request.get("trigger", "")), "trigger")
            note = str(request.get("note", "")) or "paused by Kairos"
            trigger = await triggers.set_state(name, trigger_pb2.TriggerState.TRIGGER_STATE_PAUSED, note)
            reply = {"trigger": trigger.name, "state": "PAUSED"}
        except KairosError as error:
            reply = {"error": error.reason, "message": error.message}
        except ValueError as error:
            reply = {"error": "INVALID_REQUEST", "message": str(error)}
        log.info("control pause_trigger", reply=reply)
        await message.respond(json.dumps(reply).encode())

    subscription = await runtime.nats.subscribe(PAUSE_SUBJECT, queue=QUEUE, cb=pause)
    stack.push_async_callback(subscription.unsubscribe)
