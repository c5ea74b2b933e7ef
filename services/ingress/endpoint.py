"""The webhook HTTP endpoint. A request is answered 202 only after JetStream acknowledged its fire; when
NATS cannot take it the answer is 503 with Retry-After, so the sender retries and nothing accepted is lost.
Every error is a JSON body `{"error": <code>, "message": <text>}`."""

from __future__ import annotations

import json
import time
from typing import Any

import nats.errors
import structlog
from google.protobuf import json_format, struct_pb2
from nats.js import JetStreamContext
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kairos.core import messaging, secrets
from kairos.core.feed import KvMirror
from kairos.core.names import RESOURCE_ID, new_id, parse_trigger
from kairos.v1 import feed_pb2, fire_pb2, run_pb2, trigger_pb2, webhook_pb2

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 1 << 20
EVENT_TYPE_KEYS = ("type", "event_type", "event", "action")
IDEMPOTENCY_HEADERS = ("webhook-id", "idempotency-key")
Mode = webhook_pb2.WebhookAuthMode


class Rejection(Exception):
    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "message": self.message}, self.status, headers=self.headers)


def event_type_of(body: Any) -> str:
    """The first non-empty string among type, event_type, event, action of the (signed) body."""
    if isinstance(body, dict):
        for key in EVENT_TYPE_KEYS:
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
    return ""


def lookup_path(body: Any, path: str) -> tuple[bool, Any]:
    node = body
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def mapped_fields(body: Any, mapping: dict[str, str]) -> dict[str, Any]:
    fields = {}
    for path, input_field in mapping.items():
        found, value = lookup_path(body, path)
        if found:
            fields[input_field] = value
    return fields


def _credential(record: feed_pb2.WebhookRecord, request: Request) -> str | None:
    mode = record.webhook.auth_mode
    if mode == Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER:
        return request.headers.get("x-trigger-secret")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(record: feed_pb2.WebhookRecord, request: Request, now_seconds: float) -> None:
    presented = _credential(record, request)
    if presented is None:
        header = (
            "X-Trigger-Secret"
            if record.webhook.auth_mode == Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER
            else ("Authorization: Bearer")
        )
        raise Rejection(401, "missing_credentials", f"send the webhook's secret in {header}")
    valid = False
    for credential in record.credentials:
        if credential.HasField("expire_time") and credential.expire_time.seconds <= now_seconds:
            continue
        valid |= secrets.matches(presented, credential.digest)
    if not valid:
        raise Rejection(401, "invalid_credentials", "the credentials do not match this webhook")


class WebhookEndpoint:
    """Verifies, maps and publishes one webhook request."""

    def __init__(
        self,
        js: JetStreamContext,
        webhooks: KvMirror[feed_pb2.WebhookRecord],
        triggers: KvMirror[trigger_pb2.Trigger],
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._js = js
        self._webhooks = webhooks
        self._triggers = triggers
        self._max_body = max_body_bytes

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_body:
            raise Rejection(413, "body_too_large", f"the body must be at most {self._max_body} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise Rejection(413, "body_too_large", f"the body must be at most {self._max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(self, request: Request) -> Response:
        try:
            return await self._accept(request, request.path_params["webhook_id"])
        except Rejection as rejection:
            log.info("webhook rejected", status=rejection.status, error=rejection.error)
            return rejection.response()

    async def _accept(self, request: Request, webhook_id: str) -> Response:
        unknown = Rejection(404, "webhook_not_found", "no such webhook")
        if not RESOURCE_ID.match(webhook_id):
            raise unknown
        record = await self._webhooks.get(webhook_id)
        if record is None:
            raise unknown
        webhook = record.webhook
        authenticate(record, request, time.time())
        if webhook.disabled:
            raise Rejection(403, "webhook_disabled", "this webhook is disabled")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise Rejection(415, "unsupported_media_type", "send the body as application/json")
        raw = await self._body(request)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise Rejection(400, "malformed_json", "the body is not valid JSON") from None
        event_type = event_type_of(body)
        if webhook.accepted_event_types and event_type not in webhook.accepted_event_types:
            raise Rejection(
                422, "event_type_not_accepted", f"event type {event_type!r} is not accepted by this webhook"
            )
        trigger_name = parse_trigger(webhook.trigger, "trigger")
        trigger = await self._triggers.get(f"{trigger_name.workspace}.{trigger_name.trigger}")
        if trigger is None:
            raise unknown
        if trigger.state != trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE:
            raise Rejection(409, "trigger_not_active", "the trigger this webhook fires is paused or a draft")

        sender_key = next((request.headers[h] for h in IDEMPOTENCY_HEADERS if request.headers.get(h)), "")
        event_id = sender_key[:200] if sender_key else new_id("evt")
        fire = fire_pb2.FireRequest(
            fire_id=f"{webhook.name}@{event_id}",
            trigger=webhook.trigger,
            trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK,
            action=trigger.action,
            policies=trigger.policies,
            webhook=webhook.name,
            event_type=event_type,
            trigger_revision=trigger.revision,
        )
        fire.fire_time.GetCurrentTime()
        json_format.ParseDict(body, fire.payload)
        overrides = mapped_fields(body, dict(webhook.field_mapping))
        if overrides:
            fire.input_overrides.CopyFrom(_struct(overrides))
        try:
            await messaging.publish_fire(
                self._js,
                messaging.fire_subject(trigger_name.workspace, trigger_name.trigger),
                fire.SerializeToString(),
                fire.fire_id,
            )
        except nats.errors.MaxPayloadError:
            # Permanent: the fire (body plus the trigger's action) exceeds the NATS max payload; a retry
            # would fail the same way, so this is no 503.
            raise Rejection(413, "body_too_large", "the event is too large to store; send a smaller body") from None
        except Exception as error:
            log.warning("webhook not accepted: JetStream did not acknowledge", error=str(error))
            raise Rejection(
                503, "unavailable", "the event could not be stored; retry later", {"Retry-After": "5"}
            ) from error
        return JSONResponse({"event_id": event_id, "status": "accepted"}, 202)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def build_app(endpoint: WebhookEndpoint, nats_connected) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if nats_connected():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "unavailable", "message": "not connected to NATS"}, 503)

    return Starlette(
        routes=[
            Route("/hooks/{webhook_id}", endpoint.handle, methods=["POST"]),
            Route("/api/hooks/webhook/{webhook_id}", endpoint.handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )
