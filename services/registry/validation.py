"""Validation of triggers and webhooks: every problem is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import math
import re
from datetime import datetime
from urllib.parse import urlparse

from kairos.core import messaging
from kairos.core.errors import invalid_argument
from kairos.core.names import EVENT_TYPE, EVENT_TYPE_RULE
from kairos.core.schedule import Schedule, compile_schedule
from kairos.v1 import trigger_pb2, webhook_pb2

MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 2_000
MAX_PROMPT = 32_768
MAX_TEMPLATE_BYTES = 65_536
MAX_ACCEPTED_EVENT_TYPES = 50
MAX_LABELS = 64
MAX_STATE_NOTE = 1_000
MAX_DURATION_SECONDS = 315_576_000_000
CREATABLE_STATES = (
    trigger_pb2.TriggerState.TRIGGER_STATE_UNSPECIFIED,
    trigger_pb2.TriggerState.TRIGGER_STATE_DRAFT,
    trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE,
    trigger_pb2.TriggerState.TRIGGER_STATE_PAUSED,
)
AGENT_NAME = re.compile(r"^agents/[a-z0-9][a-z0-9_-]{0,62}\Z")
OWNER_NAME = re.compile(r"^(users|serviceAccounts)/[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}\Z")
DOT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_0-9][A-Za-z0-9_-]*){0,15}\Z")
INPUT_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
ENTRY_POINT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*\Z")
NATS_SUBJECT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")


def _http_url(value: str, field: str, reason: str) -> None:
    try:
        parsed = urlparse(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise invalid_argument(reason, field, f"must be an http(s) URL, got {value!r}")


def _length(value: str, limit: int, field: str) -> None:
    if len(value) > limit:
        raise invalid_argument("FIELD_TOO_LONG", field, f"must be at most {limit} characters")


def _known_enum(value: int, enum_type, field: str) -> None:
    if value not in enum_type.values():
        raise invalid_argument("INVALID_ENUM_VALUE", field, f"{value} is not a {enum_type.DESCRIPTOR.name}")


def _duration(duration, field: str) -> None:
    if not (0 <= duration.seconds <= MAX_DURATION_SECONDS and 0 <= duration.nanos <= 999_999_999):
        raise invalid_argument("INVALID_DURATION", field, "must be a valid, non-negative duration")


def validate_trigger(trigger: trigger_pb2.Trigger, anchor: datetime) -> Schedule | None:
    """Checks a trigger's user-settable fields; returns its compiled schedule for schedule sources."""
    _length(trigger.display_name, MAX_DISPLAY_NAME, "trigger.display_name")
    _length(trigger.description, MAX_DESCRIPTION, "trigger.description")
    if trigger.state not in CREATABLE_STATES:
        raise invalid_argument("INVALID_STATE", "trigger.state", "must be DRAFT, ACTIVE or PAUSED")
    _length(trigger.state_note, MAX_STATE_NOTE, "trigger.state_note")
    if len(trigger.labels) > MAX_LABELS:
        raise invalid_argument("TOO_MANY_LABELS", "trigger.labels", f"at most {MAX_LABELS} labels")
    schedule = _validate_source(trigger.source)
    if schedule is not None:
        schedule = compile_schedule(trigger.source.schedule, anchor=anchor, field_prefix="trigger.source.schedule")
    _validate_action(trigger.action)
    _validate_policies(trigger.policies)
    return schedule


def _validate_source(source: trigger_pb2.TriggerSource) -> bool | None:
    kind = source.WhichOneof("kind")
    if kind is None:
        raise invalid_argument("MISSING_SOURCE", "trigger.source", "set one of schedule, webhook or event")
    if kind == "event":
        if not EVENT_TYPE.match(source.event.event_type):
            raise invalid_argument("INVALID_EVENT_TYPE", "trigger.source.event.event_type", EVENT_TYPE_RULE)
        for index, condition in enumerate(source.event.filter):
            if not DOT_PATH.match(condition.path):
                raise invalid_argument(
                    "INVALID_FIELD_PATH",
                    f"trigger.source.event.filter[{index}].path",
                    f"must be dot notation such as contact.email, got {condition.path!r}",
                )
            if condition.WhichOneof("test") is None:
                raise invalid_argument(
                    "MISSING_CONDITION", f"trigger.source.event.filter[{index}]", "set equals, in or exists"
                )
    return True if kind == "schedule" else None


def _validate_action(action: trigger_pb2.Action) -> None:
    if not AGENT_NAME.match(action.agent):
        raise invalid_argument("INVALID_AGENT", "trigger.action.agent", "must look like agents/{agent}")
    if action.owner and not OWNER_NAME.match(action.owner):
        raise invalid_argument(
            "INVALID_OWNER", "trigger.action.owner", "must look like users/{user} or serviceAccounts/{id}"
        )
    _known_enum(action.agent_version, trigger_pb2.AgentVersion, "trigger.action.agent_version")
    _length(action.prompt, MAX_PROMPT, "trigger.action.prompt")
    if action.input_template.ByteSize() > MAX_TEMPLATE_BYTES:
        raise invalid_argument(
            "TEMPLATE_TOO_LARGE",
            "trigger.action.input_template",
            f"must be at most {MAX_TEMPLATE_BYTES} bytes",
        )
    runner = action.runner.WhichOneof("kind")
    if runner is None:
        raise invalid_argument("UNKNOWN_RUNNER", "trigger.action.runner", "set one of http, nats or python")
    if runner == "http":
        _http_url(action.runner.http.url, "trigger.action.runner.http.url", "INVALID_RUNNER_URL")
    elif runner == "nats" and action.runner.nats.subject:
        subject = action.runner.nats.subject
        if not NATS_SUBJECT.match(subject):
            raise invalid_argument(
                "INVALID_RUNNER_SUBJECT", "trigger.action.runner.nats.subject", "must be a literal NATS subject"
            )
        if messaging.reserved_for_kairos(subject):
            raise invalid_argument(
                "INVALID_RUNNER_SUBJECT",
                "trigger.action.runner.nats.subject",
                f"{subject!r} is one of Kairos' own subjects; agents listen under "
                f"{messaging.AGENT_SUBJECT_PREFIX}* or outside kairos.*",
            )
    elif runner == "python" and not ENTRY_POINT.match(action.runner.python.entry_point):
        raise invalid_argument(
            "INVALID_ENTRY_POINT",
            "trigger.action.runner.python.entry_point",
            "must look like package.module:function",
        )


def _validate_policies(policies: trigger_pb2.Policies) -> None:
    if policies.attempt_deadline.seconds < 0 or policies.attempt_deadline.nanos < 0:
        raise invalid_argument("INVALID_DEADLINE", "trigger.policies.attempt_deadline", "must not be negative")
    _duration(policies.attempt_deadline, "trigger.policies.attempt_deadline")
    _known_enum(policies.overlap, trigger_pb2.OverlapPolicy, "trigger.policies.overlap")
    _known_enum(policies.catchup.mode, trigger_pb2.CatchupMode, "trigger.policies.catchup.mode")
    _duration(policies.catchup.window, "trigger.policies.catchup.window")
    retry = policies.retry
    _duration(retry.initial_backoff, "trigger.policies.retry.initial_backoff")
    _duration(retry.max_backoff, "trigger.policies.retry.max_backoff")
    if retry.max_backoff.ToNanoseconds() and retry.max_backoff.ToNanoseconds() < retry.initial_backoff.ToNanoseconds():
        raise invalid_argument(
            "INVALID_RETRY", "trigger.policies.retry.max_backoff", "must not be shorter than initial_backoff"
        )
    if not math.isfinite(retry.backoff_multiplier) or not (
        retry.backoff_multiplier == 0 or retry.backoff_multiplier >= 1
    ):
        raise invalid_argument(
            "INVALID_RETRY", "trigger.policies.retry.backoff_multiplier", "must be at least 1 (0 means the default)"
        )
    if policies.max_runs_per_day < 0:
        raise invalid_argument("INVALID_LIMIT", "trigger.policies.max_runs_per_day", "must not be negative")
    if policies.pause_after_failures < 0:
        raise invalid_argument("INVALID_LIMIT", "trigger.policies.pause_after_failures", "must not be negative")
    if not 0 <= policies.retry.max_attempts <= 100:
        raise invalid_argument("INVALID_RETRY", "trigger.policies.retry.max_attempts", "must be 0 to 100")
    if policies.catchup.max_fires < 0:
        raise invalid_argument("INVALID_LIMIT", "trigger.policies.catchup.max_fires", "must not be negative")
    if policies.notify_url:
        _http_url(policies.notify_url, "trigger.policies.notify_url", "INVALID_NOTIFY_URL")


def validate_webhook(webhook: webhook_pb2.Webhook) -> None:
    _length(webhook.display_name, MAX_DISPLAY_NAME, "webhook.display_name")
    if webhook.owner and not OWNER_NAME.match(webhook.owner):
        raise invalid_argument("INVALID_OWNER", "webhook.owner", "must look like users/{user}")
    if len(webhook.accepted_event_types) > MAX_ACCEPTED_EVENT_TYPES:
        raise invalid_argument(
            "TOO_MANY_EVENT_TYPES", "webhook.accepted_event_types", f"at most {MAX_ACCEPTED_EVENT_TYPES}"
        )
    for index, event_type in enumerate(webhook.accepted_event_types):
        if not event_type or len(event_type) > 200:
            raise invalid_argument(
                "INVALID_EVENT_TYPE", f"webhook.accepted_event_types[{index}]", "must be 1 to 200 characters"
            )
    for path, input_field in webhook.field_mapping.items():
        if not DOT_PATH.match(path):
            raise invalid_argument(
                "INVALID_FIELD_PATH",
                "webhook.field_mapping",
                f"{path!r} is not dot notation such as contact.phone",
            )
        if not INPUT_FIELD.match(input_field):
            raise invalid_argument(
                "INVALID_FIELD_NAME",
                "webhook.field_mapping",
                f"{input_field!r} is not a valid input field name",
            )
    limit = webhook.rate_limit
    if not math.isfinite(limit.requests_per_second) or limit.requests_per_second < 0 or limit.burst < 0:
        raise invalid_argument("INVALID_RATE_LIMIT", "webhook.rate_limit", "must not be negative")
