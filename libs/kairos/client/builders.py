"""Builders for the common trigger shapes, so callers need not assemble nested messages by hand."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2

from kairos.v1 import trigger_pb2

DEMO_AGENT = "agents/demo"
DEMO_ENTRY_POINT = "kairos.agents.demo:echo"


def action(
    agent: str = DEMO_AGENT,
    *,
    prompt: str = "",
    input_template: dict[str, Any] | None = None,
    entry_point: str = "",
    http_url: str = "",
    nats_subject: str = "",
    owner: str = "",
) -> trigger_pb2.Action:
    """An action; with no runner named, the built-in demo agent runs in-process."""
    result = trigger_pb2.Action(agent=agent, prompt=prompt, owner=owner)
    if input_template:
        template = struct_pb2.Struct()
        template.update(input_template)
        result.input_template.CopyFrom(template)
    if http_url:
        result.runner.http.url = http_url
    elif nats_subject:
        result.runner.nats.subject = nats_subject
    else:
        result.runner.python.entry_point = entry_point or DEMO_ENTRY_POINT
    return result


def schedule_trigger(
    *,
    cron: str = "",
    every: timedelta | None = None,
    at: datetime | None = None,
    timezone: str = "",
    display_name: str = "",
    **action_fields: Any,
) -> trigger_pb2.Trigger:
    """A schedule trigger from exactly one of `cron`, `every` or `at`."""
    if sum((bool(cron), every is not None, at is not None)) != 1:  # a zero `every` is given: the registry refuses it
        raise ValueError("give exactly one of cron, every or at")
    source = trigger_pb2.ScheduleSource(timezone=timezone)
    if cron:
        source.cron.expression = cron
    elif every is not None:
        source.interval.every.CopyFrom(duration_pb2.Duration(seconds=int(every.total_seconds())))
    else:
        source.one_shot.fire_time.FromDatetime(at)
    return trigger_pb2.Trigger(
        display_name=display_name,
        source=trigger_pb2.TriggerSource(schedule=source),
        action=action(**action_fields),
    )


def webhook_trigger(*, display_name: str = "", **action_fields: Any) -> trigger_pb2.Trigger:
    return trigger_pb2.Trigger(
        display_name=display_name,
        source=trigger_pb2.TriggerSource(webhook=trigger_pb2.WebhookSource()),
        action=action(**action_fields),
    )


def event_trigger(
    event_type: str,
    *,
    conditions: Sequence[trigger_pb2.FieldCondition] = (),
    display_name: str = "",
    **action_fields: Any,
) -> trigger_pb2.Trigger:
    """A trigger that fires on `event_type` events whose payload meets every one of `conditions` (see `equals`,
    `one_of`, `exists`)."""
    return trigger_pb2.Trigger(
        display_name=display_name,
        source=trigger_pb2.TriggerSource(event=trigger_pb2.EventSource(event_type=event_type, filter=conditions)),
        action=action(**action_fields),
    )


def equals(path: str, value: Any) -> trigger_pb2.FieldCondition:
    """The event payload's value at dot-notation `path` equals `value` (any JSON value)."""
    condition = trigger_pb2.FieldCondition(path=path)
    json_format.ParseDict(value, condition.equals)
    return condition


def one_of(path: str, values: Sequence[Any]) -> trigger_pb2.FieldCondition:
    """The event payload's value at dot-notation `path` is one of `values`."""
    condition = trigger_pb2.FieldCondition(path=path)
    getattr(condition, "in").extend(values)  # `in` is a Python keyword
    return condition


def exists(path: str, present: bool = True) -> trigger_pb2.FieldCondition:
    """The event payload has a value at dot-notation `path` (or, with `present=False`, has none)."""
    return trigger_pb2.FieldCondition(path=path, exists=present)
