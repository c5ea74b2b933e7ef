"""The webhook HTTP endpoint. A request is answered 202 only after JetStream acknowledged its fire; when
NATS cannot take it the answer is 503 with Retry-After, so the sender retries and nothing accepted is lost.
A delivery repeated with the same `webhook-id` (or `Idempotency-Key`) within 24 hours is answered with the
original event id and fires nothing. Every error is a JSON body `{"error": <code>, "message": <text>}`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
import orjson
import structlog
from google.protobuf import json_format, struct_pb2
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kairos.core import messaging, secrets
from kairos.core.feed import KvMirror
from kairos.core.names import RESOURCE_ID, new_id, parse_trigger
from kairos.ingress.limits import RateLimiter
from kairos.ingress.metrics import IngressMetrics
from kairos.ingress.signatures import DEFAULT_TOLERANCE_S, SignatureError, SigningKeys, signed_headers, verify
from kairos.v1 import feed_pb2, fire_pb2, run_pb2, trigger_pb2, webhook_pb2

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 1 << 20
EVENT_TYPE_KEYS = ("type", "event_type", "event", "action")
IDEMPOTENCY_HEADERS = ("webhook-id", "idempotency-key")
MAX_SENDER_KEY_CHARS = 200
RETRY_AFTER_S = "5"
Mode = webhook_pb2.WebhookAuthMode


class Rejection(Exception):
    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers or {}

    def response(self) -> Response:
        body = orjson.dumps({"error": self.error, "message": self.message})
        return Response(body, self.status, headers=self.headers, media_type="application/json")


def unavailable() -> Rejection:
    return Rejection(503, "unavailable", "the event could not be stored; retry later", {"Retry-After": RETRY_AFTER_S})


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


def _token(record: feed_pb2.WebhookRecord, request: Request) -> str | None:
    if record.webhook.auth_mode == Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER:
        return request.headers.get("x-trigger-secret") or None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_matches(record: feed_pb2.WebhookRecord, presented: str, now_seconds: float) -> bool:
    """Constant-time comparison of a bearer token or shared secret with every unexpired credential digest."""
    valid = False
    for credential in record.credentials:
        if not credential.digest:
            continue
        if credential.HasField("expire_time") and credential.expire_time.seconds <= now_seconds:
            continue
        valid |= secrets.matches(presented, credential.digest)
    return valid


def delivery_key(webhook_id: str, sender_key: str) -> str:
    """The deliveries-bucket key of one delivery: KV keys allow few characters, so the sender's key is hashed."""
    return f"{webhook_id}.{hashlib.sha256(sender_key.encode()).hexdigest()[:40]}"


class TriggerIndex:
    """trigger id -> trigger-mirror key (`<workspace>.<trigger>`), kept by the trigger mirror's change callback,
    for the `/triggers/{trigger_id}/webhook` alias whose path carries no workspace."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}

    def on_change(self, key: str, value: Any) -> None:
        trigger_id = key.rpartition(".")[2]
        if value is None:
            self._keys.pop(trigger_id, None)
        else:
            self._keys[trigger_id] = key

    def key_of(self, trigger_id: str) -> str | None:
        return self._keys.get(trigger_id)


class WebhookEndpoint:
    """Verifies, rate-limits, de-duplicates, maps and publishes one webhook request."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        webhooks: KvMirror[feed_pb2.WebhookRecord],
        triggers: KvMirror[trigger_pb2.Trigger],
        deliveries: KeyValue,
        *,
        signing_keys: SigningKeys,
        limiter: RateLimiter,
        metrics: IngressMetrics,
        trigger_index: TriggerIndex,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc = nc
        self._js = js
        self._webhooks = webhooks
        self._triggers = triggers
        self._deliveries = deliveries
        self._deliveries_prefix = f"$KV.{messaging.WEBHOOK_DELIVERIES_BUCKET}."
        self._signing_keys = signing_keys
        self._limiter = limiter
        self._metrics = metrics
        self._trigger_index = trigger_index
        self._tolerance_s = tolerance_s
        self._max_body = max_body_bytes
        self._clock = clock

    async def handle(self, request: Request) -> Response:
        """`POST /hooks/{webhook_id}` and its alias `POST /api/hooks/webhook/{webhook_id}`."""
        try:
            webhook_id = request.path_params["webhook_id"]
            record = await self._record(webhook_id)
            response = await self._accept(request, webhook_id, record, authenticated=False)
        except Rejection as rejection:
            response = self._rejected(rejection)
        self._metrics.answered(response.status_code)
        return response

    async def handle_trigger(self, request: Request) -> Response:
        """`POST /triggers/{trigger_id}/webhook` with `X-Trigger-Secret`: whichever shared-secret webhook of
        the trigger the secret belongs to."""
        try:
            webhook_id, record = await self._webhook_of_trigger(request)
            response = await self._accept(request, webhook_id, record, authenticated=True)
        except Rejection as rejection:
            response = self._rejected(rejection)
        self._metrics.answered(response.status_code)
        return response

    def _rejected(self, rejection: Rejection) -> Response:
        if rejection.status == 401:
            self._metrics.verification_failed(rejection.error)
        if rejection.status >= 500:
            log.warning("webhook not accepted", status=rejection.status, error=rejection.error)
        else:
            log.debug("webhook rejected", status=rejection.status, error=rejection.error)
        return rejection.response()

    async def _record(self, webhook_id: str) -> feed_pb2.WebhookRecord:
        if not RESOURCE_ID.match(webhook_id):
            raise Rejection(404, "webhook_not_found", "no such webhook")
        record = self._webhooks.cached(webhook_id)
        if record is None:
            if not self._nc.is_connected:
                raise unavailable()
            record = await self._webhooks.get(webhook_id)
        if record is None:
            raise Rejection(404, "webhook_not_found", "no such webhook")
        return record

    async def _webhook_of_trigger(self, request: Request) -> tuple[str, feed_pb2.WebhookRecord]:
        unknown = Rejection(404, "trigger_not_found", "no such trigger")
        trigger_id = request.path_params["trigger_id"]
        key = self._trigger_index.key_of(trigger_id) if RESOURCE_ID.match(trigger_id) else None
        trigger = self._triggers.cached(key) if key else None
        if trigger is None or not trigger.source.HasField("webhook"):
            raise unknown
        presented = request.headers.get("x-trigger-secret")
        if not presented:
            raise Rejection(401, "missing_credentials", "send the webhook's secret in X-Trigger-Secret")
        now = self._clock()
        for webhook_name in trigger.source.webhook.webhooks:
            webhook_id = webhook_name.rpartition("/")[2]
            record = self._webhooks.cached(webhook_id)
            if record is None or record.webhook.auth_mode != Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER:
                continue
            if token_matches(record, presented, now):
                return webhook_id, record
        raise Rejection(401, "invalid_credentials", "the secret matches no X-Trigger-Secret webhook of this trigger")

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_body:
            raise Rejection(413, "body_too_large", f"the body must be at most {self._max_body} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise Rejection(413, "body_too_large", f"the body must be at most {self._max_body} bytes")
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _authenticate_token(self, record: feed_pb2.WebhookRecord, request: Request, now: float) -> None:
        presented = _token(record, request)
        if presented is None:
            header = (
                "X-Trigger-Secret"
                if record.webhook.auth_mode == Mode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER
                else "Authorization: Bearer"
            )
            raise Rejection(401, "missing_credentials", f"send the webhook's secret in {header}")
        if not token_matches(record, presented, now):
            raise Rejection(401, "invalid_credentials", "the credentials do not match this webhook")

    async def _accept(
        self, request: Request, webhook_id: str, record: feed_pb2.WebhookRecord, *, authenticated: bool
    ) -> Response:
        webhook = record.webhook
        headers = request.headers
        now = self._clock()
        signed = webhook.auth_mode == Mode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS
        signature = None
        if signed:
            try:
                signature = signed_headers(headers, now, self._tolerance_s)
            except SignatureError as error:
                raise Rejection(401, error.error, error.message) from None
        elif not authenticated:
            self._authenticate_token(record, request, now)
        raw = await self._read_body(request)
        if signature is not None:
            message_id, timestamp, signature_header = signature
            try:
                verify(
                    self._signing_keys.current(webhook_id, record, now), message_id, timestamp, raw, signature_header
                )
            except SignatureError as error:
                raise Rejection(401, error.error, error.message) from None
        if webhook.disabled:
            raise Rejection(403, "webhook_disabled", "this webhook is disabled")
        retry_after = self._limiter.acquire(webhook_id, webhook.rate_limit)
        if retry_after:
            raise Rejection(
                429,
                "rate_limited",
                "this webhook's rate limit is exceeded; retry later",
                {"Retry-After": str(retry_after)},
            )
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise Rejection(415, "unsupported_media_type", "send the body as application/json")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Rejection(400, "malformed_json", "the body is not valid JSON") from None
        event_type = event_type_of(body)
        if webhook.accepted_event_types and event_type not in webhook.accepted_event_types:
            raise Rejection(
                422, "event_type_not_accepted", f"event type {event_type!r} is not accepted by this webhook"
            )
        trigger_name = parse_trigger(webhook.trigger, "trigger")
        trigger = await self._triggers.get(f"{trigger_name.workspace}.{trigger_name.trigger}")
        if trigger is None:
            raise Rejection(404, "webhook_not_found", "no such webhook")
        if trigger.state != trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE:
            raise Rejection(409, "trigger_not_active", "the trigger this webhook fires is paused or a draft")
        if not self._nc.is_connected:
            raise unavailable()

        sender_key = headers.get("webhook-id") or headers.get("idempotency-key") or ""
        sender_key = sender_key[:MAX_SENDER_KEY_CHARS]
        seen_key = delivery_key(webhook_id, sender_key) if sender_key else ""
        if seen_key:
            original = await self._seen(seen_key)
            if original is not None:
                self._metrics.deduplicated.inc()
                return _accepted(original)
        event_id = sender_key or new_id("evt")
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
        if isinstance(body, dict):
            fire.payload.struct_value.update(body)  # three times faster than json_format for the common case
        else:
            json_format.ParseDict(body, fire.payload)
        overrides = mapped_fields(body, dict(webhook.field_mapping)) if webhook.field_mapping else None
        if overrides:
            fire.input_overrides.CopyFrom(_struct(overrides))
        await self._publish(
            messaging.fire_subject(trigger_name.workspace, trigger_name.trigger), fire.SerializeToString(), fire.fire_id
        )
        if seen_key:
            # Remembered without waiting: a retry racing this write has the same fire id, which JetStream's
            # duplicate window (10 minutes) and the run's unique fire id already stop.
            await self._nc.publish(self._deliveries_prefix + seen_key, event_id.encode())
        return _accepted(event_id)

    async def _seen(self, key: str) -> str | None:
        try:
            entry = await self._deliveries.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except Exception as error:
            log.warning("webhook deliveries unreadable", error=str(error))
            raise unavailable() from error
        return entry.value.decode() if entry.value else None

    async def _publish(self, subject: str, payload: bytes, fire_id: str) -> None:
        started = time.perf_counter()
        try:
            await messaging.publish_fire(self._js, subject, payload, fire_id)
        except nats.errors.MaxPayloadError:
            # Permanent: the fire (body plus the trigger's action) exceeds the NATS max payload; a retry
            # would fail the same way, so this is no 503.
            raise Rejection(413, "body_too_large", "the event is too large to store; send a smaller body") from None
        except Exception as error:
            log.warning("webhook not accepted: JetStream did not acknowledge", error=str(error))
            raise unavailable() from error
        self._metrics.publish_seconds.observe(time.perf_counter() - started)


def _accepted(event_id: str) -> Response:
    return Response(orjson.dumps({"event_id": event_id, "status": "accepted"}), 202, media_type="application/json")


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def build_app(endpoint: WebhookEndpoint, metrics: IngressMetrics, nats_connected: Callable[[], bool]) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if nats_connected():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "unavailable", "message": "not connected to NATS"}, 503)

    async def prometheus(_: Request) -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(
        routes=[
            Route("/hooks/{webhook_id}", endpoint.handle, methods=["POST"]),
            Route("/api/hooks/webhook/{webhook_id}", endpoint.handle, methods=["POST"]),
            Route("/triggers/{trigger_id}/webhook", endpoint.handle_trigger, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )
