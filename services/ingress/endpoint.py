"""The webhook HTTP endpoint. A request is answered 202 only after JetStream acknowledged its fire; when
NATS cannot take it the answer is 503 with Retry-After, so the sender retries and nothing accepted is lost.
A delivery repeated with the same `webhook-id` (or `Idempotency-Key`) is answered with the original event id
and fires nothing: its fire is published on a subject of its own with `Nats-Expected-Last-Subject-Sequence: 0`,
so JetStream stores it at most once for as long as KAIROS_FIRES keeps it.
Every error is a JSON body `{"error": <code>, "message": <text>}`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from nats.aio.client import Client as NatsClient

from kairos.core import messaging, secrets
from kairos.core.feed import KvMirror
from kairos.core.jetstream import (
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    EXPECTED_STREAM_HEADER,
    HeaderBlock,
    JetStreamPublisher,
    PayloadTooLargeError,
    SubjectNotEmptyError,
)
from kairos.core.names import RESOURCE_ID, new_id, parse_trigger
from kairos.ingress.asgi import Answer, App, BodyTooLarge, Request, Routes, json_answer
from kairos.ingress.limits import RateLimiter
from kairos.ingress.metrics import IngressMetrics
from kairos.ingress.signatures import DEFAULT_TOLERANCE_S, SignatureError, SigningKeys, signed_headers, verify
from kairos.v1 import feed_pb2, fire_pb2, run_pb2, trigger_pb2, webhook_pb2

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 1 << 20
EVENT_TYPE_KEYS = ("type", "event_type", "event", "action")
# A sender's key up to this long is the event id as it is; a longer one gets a longer id (see event_id_of).
MAX_SENDER_KEY_CHARS = 200
RETRY_AFTER_S = b"5"
# A sender waits at most PUBLISH_TIMEOUT_S * PUBLISH_ATTEMPTS for its answer when JetStream is slow to ack.
PUBLISH_TIMEOUT_S = 2.5
PUBLISH_ATTEMPTS = 2
# A keyed delivery's fire is stored only while its subject holds nothing: JetStream refuses a repeat
# (SubjectNotEmptyError), whoever sends it and however late. Encoded once: every keyed delivery carries it.
FIRST_ON_SUBJECT = HeaderBlock(
    {EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: "0", EXPECTED_STREAM_HEADER: messaging.FIRES_STREAM}
)
KEYED_DELIVERY = {"headers": FIRST_ON_SUBJECT}
# A webhook the mirror does not hold (yet: a new one reaches it a few milliseconds after it is created) is looked
# up in its KV bucket; these bound those look-ups for the whole process, so a flood of made-up webhook ids cannot
# turn into as many NATS requests. Over the bound, such a request is answered 404 from the mirror alone.
UNMIRRORED_LOOKUPS = "(unmirrored look-ups)"  # a rate-limiter key no webhook id can be
UNMIRRORED_LOOKUPS_PER_S = 50.0
UNMIRRORED_LOOKUPS_BURST = 100
# Enum values as module constants: each `EnumType.NAME` lookup goes through a Python __getattr__ (~5 µs).
SHARED_SECRET_HEADER = webhook_pb2.WebhookAuthMode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER
STANDARD_WEBHOOKS = webhook_pb2.WebhookAuthMode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS
TRIGGER_ACTIVE = trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE


class Rejection(Exception):
    def __init__(self, status: int, error: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers

    def answer(self) -> Answer:
        return json_answer(self.status, {"error": self.error, "message": self.message}, self.headers)


def unavailable() -> Rejection:
    return Rejection(
        503, "unavailable", "the event could not be stored; retry later", ((b"retry-after", RETRY_AFTER_S),)
    )


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


def _token(record: feed_pb2.WebhookRecord, headers: dict[bytes, bytes]) -> str | None:
    if record.webhook.auth_mode == SHARED_SECRET_HEADER:
        return headers.get(b"x-trigger-secret", b"").decode("latin-1") or None
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
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


def sender_key_of(headers: dict[bytes, bytes]) -> str:
    """The sender's key of a delivery: `webhook-id`, else `Idempotency-Key` ("" for neither), read as UTF-8, or as
    Latin-1 where it is not UTF-8 (a header may hold any bytes), so a UTF-8 key comes back as it was sent."""
    raw = headers.get(b"webhook-id") or headers.get(b"idempotency-key")
    if not raw:
        return ""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def event_id_of(sender_key: str) -> str:
    """The event id of a keyed delivery: the key itself, or for a key over MAX_SENDER_KEY_CHARS its start, `~` and
    a digest of the whole key: one character longer than any key kept as it is, so no two keys share an id (the
    key was once cut at MAX_SENDER_KEY_CHARS, and a delivery whose key differed only past it was answered as a
    repeat and never fired), and short enough for the run history's fire id."""
    if len(sender_key) <= MAX_SENDER_KEY_CHARS:
        return sender_key
    digest = hashlib.sha256(sender_key.encode()).hexdigest()[:40]
    return f"{sender_key[: MAX_SENDER_KEY_CHARS - len(digest)]}~{digest}"


def delivery_token(webhook_id: str, sender_key: str) -> str:
    """The subject token of one keyed delivery: subjects allow few characters, so the sender's key is hashed."""
    return hashlib.sha256(f"{webhook_id}\n{sender_key}".encode()).hexdigest()[:40]


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


class WebhookView:
    """What a request needs of one webhook record, read out of the protobuf once (every attribute read on a
    protobuf message costs), plus its fire template: the serialized fields every fire of the webhook shares
    (trigger, action, policies, revision), followed per request by the serialized per-request fields
    (protobuf concatenation merges them). The template is rebuilt when the trigger's mirrored record changes."""

    __slots__ = (
        "accepted_event_types",
        "active",
        "auth_mode",
        "disabled",
        "field_mapping",
        "fire_id_prefix",
        "limits",
        "prefix",
        "record",
        "subject",
        "trigger",
        "trigger_key",
    )

    def __init__(self, record: feed_pb2.WebhookRecord, limits: tuple[float, int]) -> None:
        webhook = record.webhook
        trigger_name = parse_trigger(webhook.trigger, "trigger")
        self.record = record
        self.auth_mode = webhook.auth_mode
        self.disabled = webhook.disabled
        self.limits = limits
        self.accepted_event_types = frozenset(webhook.accepted_event_types)
        self.field_mapping = dict(webhook.field_mapping)
        self.fire_id_prefix = f"{webhook.name}@"
        self.trigger_key = f"{trigger_name.workspace}.{trigger_name.trigger}"
        self.subject = messaging.fire_subject(trigger_name.workspace, trigger_name.trigger)
        self.trigger: trigger_pb2.Trigger | None = None
        self.active = False
        self.prefix = b""

    def use_trigger(self, trigger: trigger_pb2.Trigger) -> None:
        webhook = self.record.webhook
        self.trigger = trigger
        self.active = trigger.state == TRIGGER_ACTIVE
        self.prefix = fire_pb2.FireRequest(
            trigger=webhook.trigger,
            trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK,
            action=trigger.action,
            policies=trigger.policies,
            webhook=webhook.name,
            trigger_revision=trigger.revision,
        ).SerializeToString()

    def fire(self, event_id: str, event_type: str, raw: bytes, body: Any) -> tuple[str, bytes]:
        """The fire id and serialized FireRequest of one accepted request: `raw` is the body as sent, `body` the
        same parsed."""
        fire_id = self.fire_id_prefix + event_id
        fields = fire_pb2.FireRequest(fire_id=fire_id, event_type=event_type, payload_json=raw)
        # Set in place: a Timestamp built apart would be copied into the message.
        fire_time = fields.fire_time
        fire_time.seconds, fire_time.nanos = divmod(time.time_ns(), 1_000_000_000)
        overrides = mapped_fields(body, self.field_mapping) if self.field_mapping else None
        if overrides:
            fields.input_overrides.update(overrides)
        return fire_id, self.prefix + fields.SerializeToString()


class WebhookViews:
    """Webhook views by webhook id, each valid for the very record object it was read from;
    `forget(webhook_id)` drops one when its webhook record changes or goes."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._by_webhook: dict[str, WebhookView] = {}

    def of(self, webhook_id: str, record: feed_pb2.WebhookRecord) -> WebhookView:
        view = self._by_webhook.get(webhook_id)
        if view is None or view.record is not record:
            view = WebhookView(record, self._limiter.limits(record.webhook.rate_limit))
            self._by_webhook[webhook_id] = view
        return view

    def forget(self, webhook_id: str) -> None:
        self._by_webhook.pop(webhook_id, None)


class WebhookEndpoint:
    """Verifies, rate-limits, de-duplicates, maps and publishes one webhook request."""

    def __init__(
        self,
        nc: NatsClient,
        publisher: JetStreamPublisher,
        webhooks: KvMirror[feed_pb2.WebhookRecord],
        triggers: KvMirror[trigger_pb2.Trigger],
        *,
        signing_keys: SigningKeys,
        limiter: RateLimiter,
        metrics: IngressMetrics,
        trigger_index: TriggerIndex,
        views: WebhookViews,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc = nc
        self._publisher = publisher
        self._webhooks = webhooks
        self._triggers = triggers
        self._signing_keys = signing_keys
        self._limiter = limiter
        self._metrics = metrics
        self._trigger_index = trigger_index
        self._tolerance_s = tolerance_s
        self._max_body = max_body_bytes
        self._clock = clock
        self._views = views

    async def handle(self, request: Request) -> Answer:
        """`POST /hooks/{webhook_id}` and its alias `POST /api/hooks/webhook/{webhook_id}`."""
        try:
            record = self._webhooks.cached(request.param) or await self._record(request.param)
            answer = await self._accept(request, request.param, record, authenticated=False)
        except Rejection as rejection:
            answer = self._rejected(rejection)
        self._metrics.answered(answer.status)
        return answer

    async def handle_trigger(self, request: Request) -> Answer:
        """`POST /triggers/{trigger_id}/webhook` with `X-Trigger-Secret`: whichever shared-secret webhook of
        the trigger the secret belongs to."""
        try:
            webhook_id, record = await self._webhook_of_trigger(request)
            answer = await self._accept(request, webhook_id, record, authenticated=True)
        except Rejection as rejection:
            answer = self._rejected(rejection)
        self._metrics.answered(answer.status)
        return answer

    def _rejected(self, rejection: Rejection) -> Answer:
        if rejection.status == 401:
            self._metrics.verification_failed(rejection.error)
        if rejection.status >= 500:
            log.warning("webhook not accepted", status=rejection.status, error=rejection.error)
        else:
            log.debug("webhook rejected", status=rejection.status, error=rejection.error)
        return rejection.answer()

    async def _record(self, webhook_id: str) -> feed_pb2.WebhookRecord:
        """The record of a webhook the mirror does not hold (yet): read from the bucket."""
        if not RESOURCE_ID.match(webhook_id) or not self._may_look_up():
            raise Rejection(404, "webhook_not_found", "no such webhook")
        record = await self._webhooks.get(webhook_id)
        if record is None:
            raise Rejection(404, "webhook_not_found", "no such webhook")
        return record

    def _may_look_up(self) -> bool:
        """Whether a webhook the mirror does not hold may be looked up in the bucket now (see UNMIRRORED_LOOKUPS);
        raises 503 while NATS is unreachable."""
        if not self._nc.is_connected:
            raise unavailable()
        return not self._limiter.take(UNMIRRORED_LOOKUPS, UNMIRRORED_LOOKUPS_PER_S, UNMIRRORED_LOOKUPS_BURST)

    async def _webhook_of_trigger(self, request: Request) -> tuple[str, feed_pb2.WebhookRecord]:
        unknown = Rejection(404, "trigger_not_found", "no such trigger")
        trigger_id = request.param
        key = self._trigger_index.key_of(trigger_id) if RESOURCE_ID.match(trigger_id) else None
        trigger = self._triggers.cached(key) if key else None
        if trigger is None or not trigger.source.HasField("webhook"):
            raise unknown
        presented = request.headers.get(b"x-trigger-secret", b"").decode("latin-1")
        if not presented:
            raise Rejection(401, "missing_credentials", "send the webhook's secret in X-Trigger-Secret")
        now = self._clock()
        for webhook_name in trigger.source.webhook.webhooks:
            webhook_id = webhook_name.rpartition("/")[2]
            record = self._webhooks.cached(webhook_id) or await self._listed_record(webhook_id)
            if record is None or record.webhook.auth_mode != SHARED_SECRET_HEADER:
                continue
            if token_matches(record, presented, now):
                return webhook_id, record
        raise Rejection(401, "invalid_credentials", "the secret matches no X-Trigger-Secret webhook of this trigger")

    async def _listed_record(self, webhook_id: str) -> feed_pb2.WebhookRecord | None:
        """The record of a webhook the trigger lists but the webhook mirror does not hold yet (the two mirrors
        follow separate buckets, so a new webhook can reach the trigger's list first): read from the bucket."""
        return await self._webhooks.get(webhook_id) if self._may_look_up() else None

    def _authenticate_token(self, record: feed_pb2.WebhookRecord, headers: dict[bytes, bytes], now: float) -> None:
        presented = _token(record, headers)
        if presented is None:
            header = "X-Trigger-Secret" if record.webhook.auth_mode == SHARED_SECRET_HEADER else "Authorization: Bearer"
            raise Rejection(401, "missing_credentials", f"send the webhook's secret in {header}")
        if not token_matches(record, presented, now):
            raise Rejection(401, "invalid_credentials", "the credentials do not match this webhook")

    async def _use_current_trigger(self, view: WebhookView, trigger: trigger_pb2.Trigger | None) -> None:
        """Rebuilds `view`'s fire template from the trigger's current record (`trigger`, the mirror's, or None
        when the mirror does not hold it yet)."""
        trigger = trigger or await self._triggers.get(view.trigger_key)
        if trigger is None:
            raise Rejection(404, "webhook_not_found", "no such webhook")
        view.use_trigger(trigger)

    async def _accept(
        self, request: Request, webhook_id: str, record: feed_pb2.WebhookRecord, *, authenticated: bool
    ) -> Answer:
        view = self._views.of(webhook_id, record)
        headers = request.headers
        now = self._clock()
        signature = None
        if view.auth_mode == STANDARD_WEBHOOKS:
            try:
                signature = signed_headers(headers, now, self._tolerance_s)
            except SignatureError as error:
                raise Rejection(401, error.error, error.message) from None
        elif not authenticated:
            self._authenticate_token(record, headers, now)
        try:
            raw = await request.body(self._max_body)
        except BodyTooLarge:
            raise Rejection(413, "body_too_large", f"the body must be at most {self._max_body} bytes") from None
        if signature is not None:
            message_id, timestamp, signature_header = signature
            try:
                verify(
                    self._signing_keys.current(webhook_id, record, now), message_id, timestamp, raw, signature_header
                )
            except SignatureError as error:
                raise Rejection(401, error.error, error.message) from None
        if view.disabled:
            raise Rejection(403, "webhook_disabled", "this webhook is disabled")
        retry_after = self._limiter.take(webhook_id, *view.limits)
        if retry_after:
            raise Rejection(
                429,
                "rate_limited",
                "this webhook's rate limit is exceeded; retry later",
                ((b"retry-after", str(retry_after).encode()),),
            )
        content_type = headers.get(b"content-type", b"")
        if content_type != b"application/json":
            media_type = content_type.decode("latin-1").partition(";")[0].strip().lower()
            if media_type != "application/json" and not media_type.endswith("+json"):
                raise Rejection(415, "unsupported_media_type", "send the body as application/json")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Rejection(400, "malformed_json", "the body is not valid JSON") from None
        event_type = event_type_of(body)
        if view.accepted_event_types and event_type not in view.accepted_event_types:
            raise Rejection(
                422, "event_type_not_accepted", f"event type {event_type!r} is not accepted by this webhook"
            )
        trigger = self._triggers.cached(view.trigger_key)
        if trigger is None or trigger is not view.trigger:
            await self._use_current_trigger(view, trigger)
        if not view.active:
            raise Rejection(409, "trigger_not_active", "the trigger this webhook fires is paused or a draft")
        if not self._publisher.is_connected:
            raise unavailable()

        sender_key = sender_key_of(headers)
        event_id = event_id_of(sender_key) if sender_key else new_id("evt")
        fire_id, fire = view.fire(event_id, event_type, raw, body)
        if sender_key:
            subject, options = f"{view.subject}.{delivery_token(webhook_id, sender_key)}", KEYED_DELIVERY
        else:
            subject, options = view.subject, {"msg_id": fire_id, "stream": messaging.FIRES_STREAM}
        started = time.perf_counter()
        try:
            ack = await self._publisher.publish(subject, fire, **options)
        except SubjectNotEmptyError:  # JetStream already holds this delivery's fire
            self._metrics.repeated_delivery()
            return _accepted(event_id)
        except PayloadTooLargeError as error:
            # Permanent: the fire (body plus the trigger's action) exceeds the NATS max payload; no 503.
            raise Rejection(413, "body_too_large", "the event is too large to store; send a smaller body") from error
        except Exception as error:
            log.warning("webhook not accepted: JetStream did not acknowledge", error=str(error))
            raise unavailable() from error
        self._metrics.published(time.perf_counter() - started)
        if ack.duplicate:
            self._metrics.repeated_delivery()
        return _accepted(event_id)


def _accepted(event_id: str) -> Answer:
    return Answer(202, b'{"event_id":%s,"status":"accepted"}' % orjson.dumps(event_id))


def build_app(endpoint: WebhookEndpoint, metrics: IngressMetrics, nats_connected: Callable[[], bool]) -> App:
    async def healthz(_: Request) -> Answer:
        return json_answer(200, {"status": "ok"})

    async def readyz(_: Request) -> Answer:
        if nats_connected():
            return json_answer(200, {"status": "ready"})
        return json_answer(503, {"status": "unavailable", "message": "not connected to NATS"})

    async def prometheus(_: Request) -> Answer:
        return Answer(200, metrics.exposition(), b"text/plain; version=0.0.4; charset=utf-8")

    routes = Routes()
    routes.add(("POST",), "/hooks/{webhook_id}", endpoint.handle)
    routes.add(("POST",), "/api/hooks/webhook/{webhook_id}", endpoint.handle)
    routes.add(("POST",), "/triggers/{trigger_id}/webhook", endpoint.handle_trigger)
    routes.add(("GET", "HEAD"), "/healthz", healthz)
    routes.add(("GET", "HEAD"), "/readyz", readyz)
    routes.add(("GET", "HEAD"), "/metrics", prometheus)
    return App(routes)
