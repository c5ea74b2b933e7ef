"""services/registry/validation.py: every rule rejects with its reason and field path; valid input passes.

A Hypothesis fuzz test builds arbitrary triggers and webhooks and checks that validation only ever returns or
raises INVALID_ARGUMENT (anything else would reach callers as INTERNAL).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kairos.core.errors import KairosError
from kairos.core.schedule import Schedule
from kairos.registry.validation import (
    MAX_ACCEPTED_EVENT_TYPES,
    MAX_DESCRIPTION,
    MAX_DISPLAY_NAME,
    MAX_LABELS,
    MAX_PROMPT,
    MAX_TEMPLATE_BYTES,
    validate_trigger,
    validate_webhook,
)
from kairos.v1 import trigger_pb2, webhook_pb2

ANCHOR = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def base_trigger() -> trigger_pb2.Trigger:
    trigger = trigger_pb2.Trigger(display_name="Daily digest", description="Sends the digest")
    trigger.source.schedule.cron.expression = "0 9 * * MON-FRI"
    trigger.source.schedule.timezone = "America/New_York"
    trigger.action.agent = "agents/digest"
    trigger.action.owner = "users/sam"
    trigger.action.prompt = "Summarise the day"
    trigger.action.runner.python.entry_point = "kairos.agents.demo:echo"
    return trigger


def base_webhook() -> webhook_pb2.Webhook:
    webhook = webhook_pb2.Webhook(display_name="CRM", owner="users/sam")
    webhook.accepted_event_types.extend(["contact.created", "Contact Updated"])
    webhook.field_mapping["contact.phone"] = "phone_to"
    webhook.field_mapping["id"] = "contact_id"
    webhook.rate_limit.requests_per_second = 5.0
    webhook.rate_limit.burst = 10
    return webhook


def rejected(call: Callable[[], object]) -> KairosError:
    with pytest.raises(KairosError) as raised:
        call()
    error = raised.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.violations) == 1
    assert error.message == f"{error.violations[0].field}: {error.violations[0].description}"
    return error


def assert_trigger_rejected(trigger: trigger_pb2.Trigger, reason: str, field: str) -> None:
    error = rejected(lambda: validate_trigger(trigger, ANCHOR))
    assert (error.reason, error.violations[0].field) == (reason, field)


def assert_webhook_rejected(webhook: webhook_pb2.Webhook, reason: str, field: str) -> None:
    error = rejected(lambda: validate_webhook(webhook))
    assert (error.reason, error.violations[0].field) == (reason, field)


# ---------------------------------------------------------------- valid triggers


def test_valid_cron_trigger_returns_its_schedule() -> None:
    schedule = validate_trigger(base_trigger(), ANCHOR)
    assert isinstance(schedule, Schedule)
    assert schedule.kind == "cron"
    assert schedule.timezone == "America/New_York"
    assert schedule.canonical_expression == "0 9 * * MON-FRI"
    assert schedule.next_fire_after(ANCHOR) == datetime(2025, 3, 3, 14, 0, tzinfo=UTC)  # Monday 09:00 EST


def test_valid_interval_and_one_shot_triggers() -> None:
    trigger = base_trigger()
    trigger.source.schedule.interval.every.seconds = 300
    schedule = validate_trigger(trigger, ANCHOR)
    assert schedule is not None and schedule.kind == "interval"
    trigger.source.schedule.one_shot.fire_time.FromDatetime(ANCHOR + timedelta(days=1))
    schedule = validate_trigger(trigger, ANCHOR)
    assert schedule is not None and schedule.kind == "one_shot"


def test_webhook_and_event_triggers_have_no_schedule() -> None:
    trigger = base_trigger()
    trigger.source.webhook.SetInParent()
    assert validate_trigger(trigger, ANCHOR) is None
    trigger.source.event.event_type = "thread.member_joined"
    condition = trigger.source.event.filter.add(path="thread.channel")
    condition.equals.string_value = "general"
    trigger.source.event.filter.add(path="contact.email", exists=True)
    in_condition = trigger.source.event.filter.add(path="priority")
    in_condition.SetInParent()
    getattr(in_condition, "in").values.add(string_value="high")
    assert validate_trigger(trigger, ANCHOR) is None


def test_every_runner_kind_is_accepted() -> None:
    trigger = base_trigger()
    trigger.action.runner.http.url = "https://agents.example.com/run"
    validate_trigger(trigger, ANCHOR)
    trigger.action.runner.nats.subject = ""  # empty: the default subject
    validate_trigger(trigger, ANCHOR)
    trigger.action.runner.nats.subject = "team-a.agents.digest_v2"
    validate_trigger(trigger, ANCHOR)
    trigger.action.runner.nats.subject = "kairos.agents.digest.run"
    validate_trigger(trigger, ANCHOR)


def test_limits_are_inclusive() -> None:
    trigger = base_trigger()
    trigger.display_name = "x" * MAX_DISPLAY_NAME
    trigger.description = "x" * MAX_DESCRIPTION
    trigger.action.prompt = "x" * MAX_PROMPT
    for i in range(MAX_LABELS):
        trigger.labels[f"k{i}"] = "v"
    trigger.policies.retry.max_attempts = 100
    trigger.policies.max_runs_per_day = 2**31 - 1
    trigger.policies.notify_url = "http://hooks.internal:8080/kairos"
    trigger.action.owner = "serviceAccounts/ci-bot@example.com"
    validate_trigger(trigger, ANCHOR)
    trigger.action.owner = ""  # owner is optional
    validate_trigger(trigger, ANCHOR)


# ---------------------------------------------------------------- each trigger rule


TRIGGER_RULES: list[tuple[str, Callable[[trigger_pb2.Trigger], object], str, str]] = [
    (
        "display name too long",
        lambda t: setattr(t, "display_name", "x" * (MAX_DISPLAY_NAME + 1)),
        "FIELD_TOO_LONG",
        "trigger.display_name",
    ),
    (
        "description too long",
        lambda t: setattr(t, "description", "x" * (MAX_DESCRIPTION + 1)),
        "FIELD_TOO_LONG",
        "trigger.description",
    ),
    (
        "too many labels",
        lambda t: t.labels.update({f"k{i}": "v" for i in range(MAX_LABELS + 1)}),
        "TOO_MANY_LABELS",
        "trigger.labels",
    ),
    ("no source", lambda t: t.ClearField("source"), "MISSING_SOURCE", "trigger.source"),
    (
        "schedule without spec",
        lambda t: t.source.schedule.ClearField("cron"),
        "MISSING_SCHEDULE",
        "trigger.source.schedule",
    ),
    (
        "bad cron",
        lambda t: setattr(t.source.schedule.cron, "expression", "61 * * * *"),
        "INVALID_CRON_EXPRESSION",
        "trigger.source.schedule.cron.expression",
    ),
    (
        "unknown time zone",
        lambda t: setattr(t.source.schedule, "timezone", "Mars/Olympus_Mons"),
        "UNKNOWN_TIME_ZONE",
        "trigger.source.schedule.timezone",
    ),
    (
        "interval too short",
        lambda t: setattr(t.source.schedule.interval.every, "nanos", 5),
        "INVALID_INTERVAL",
        "trigger.source.schedule.interval.every",
    ),
    (
        "event type uppercase",
        lambda t: setattr(t.source.event, "event_type", "Thread.Joined"),
        "INVALID_EVENT_TYPE",
        "trigger.source.event.event_type",
    ),
    (
        "event type empty",
        lambda t: t.source.event.SetInParent(),
        "INVALID_EVENT_TYPE",
        "trigger.source.event.event_type",
    ),
    (
        "event type over 200 characters",  # events of such a type are refused by PublishEvent: none could fire it
        lambda t: setattr(t.source.event, "event_type", "a" * 201),
        "INVALID_EVENT_TYPE",
        "trigger.source.event.event_type",
    ),
    (
        "filter path not dot notation",
        lambda t: (
            setattr(t.source.event, "event_type", "thread.created"),
            t.source.event.filter.add(path="ok.path", exists=True),
            t.source.event.filter.add(path="bad path", exists=True),
        ),
        "INVALID_FIELD_PATH",
        "trigger.source.event.filter[1].path",
    ),
    (
        "filter without a test",
        lambda t: (setattr(t.source.event, "event_type", "thread.created"), t.source.event.filter.add(path="a.b")),
        "MISSING_CONDITION",
        "trigger.source.event.filter[0]",
    ),
    ("agent missing", lambda t: setattr(t.action, "agent", ""), "INVALID_AGENT", "trigger.action.agent"),
    ("agent not a name", lambda t: setattr(t.action, "agent", "digest"), "INVALID_AGENT", "trigger.action.agent"),
    (
        "agent uppercase",
        lambda t: setattr(t.action, "agent", "agents/Digest"),
        "INVALID_AGENT",
        "trigger.action.agent",
    ),
    ("owner malformed", lambda t: setattr(t.action, "owner", "sam"), "INVALID_OWNER", "trigger.action.owner"),
    (
        "owner wrong collection",
        lambda t: setattr(t.action, "owner", "groups/eng"),
        "INVALID_OWNER",
        "trigger.action.owner",
    ),
    (
        "prompt too long",
        lambda t: setattr(t.action, "prompt", "x" * (MAX_PROMPT + 1)),
        "FIELD_TOO_LONG",
        "trigger.action.prompt",
    ),
    (
        "template too large",
        lambda t: t.action.input_template.update({"blob": "x" * MAX_TEMPLATE_BYTES}),
        "TEMPLATE_TOO_LARGE",
        "trigger.action.input_template",
    ),
    ("no runner", lambda t: t.action.ClearField("runner"), "UNKNOWN_RUNNER", "trigger.action.runner"),
    (
        "http runner without scheme",
        lambda t: setattr(t.action.runner.http, "url", "agents.example.com/run"),
        "INVALID_RUNNER_URL",
        "trigger.action.runner.http.url",
    ),
    (
        "http runner ftp",
        lambda t: setattr(t.action.runner.http, "url", "ftp://agents.example.com/run"),
        "INVALID_RUNNER_URL",
        "trigger.action.runner.http.url",
    ),
    (
        "http runner without host",
        lambda t: setattr(t.action.runner.http, "url", "https:///run"),
        "INVALID_RUNNER_URL",
        "trigger.action.runner.http.url",
    ),
    (
        "http runner empty",
        lambda t: t.action.runner.http.SetInParent(),
        "INVALID_RUNNER_URL",
        "trigger.action.runner.http.url",
    ),
    (
        "nats wildcard subject",
        lambda t: setattr(t.action.runner.nats, "subject", "agents.*.run"),
        "INVALID_RUNNER_SUBJECT",
        "trigger.action.runner.nats.subject",
    ),
    *(
        (
            f"nats subject of Kairos itself: {subject}",
            lambda t, subject=subject: setattr(t.action.runner.nats, "subject", subject),
            "INVALID_RUNNER_SUBJECT",
            "trigger.action.runner.nats.subject",
        )
        for subject in (
            "kairos.events.other-workspace.thread.created",
            "kairos.fire.other-workspace.t_1",
            "kairos.trace.other-workspace.t_1",
            "kairos.control.registry.pause_trigger",
            "kairos.agentsX.run",
            "_INBOX.abc.1",
        )
    ),
    (
        "nats subject with space",
        lambda t: setattr(t.action.runner.nats, "subject", "agents. run"),
        "INVALID_RUNNER_SUBJECT",
        "trigger.action.runner.nats.subject",
    ),
    (
        "python entry point without function",
        lambda t: setattr(t.action.runner.python, "entry_point", "kairos.agents.demo"),
        "INVALID_ENTRY_POINT",
        "trigger.action.runner.python.entry_point",
    ),
    (
        "python entry point empty",
        lambda t: setattr(t.action.runner.python, "entry_point", ""),
        "INVALID_ENTRY_POINT",
        "trigger.action.runner.python.entry_point",
    ),
    (
        "negative deadline",
        lambda t: setattr(t.policies.attempt_deadline, "seconds", -1),
        "INVALID_DEADLINE",
        "trigger.policies.attempt_deadline",
    ),
    (
        "negative deadline nanos",
        lambda t: setattr(t.policies.attempt_deadline, "nanos", -1),
        "INVALID_DEADLINE",
        "trigger.policies.attempt_deadline",
    ),
    (
        "negative daily cap",
        lambda t: setattr(t.policies, "max_runs_per_day", -1),
        "INVALID_LIMIT",
        "trigger.policies.max_runs_per_day",
    ),
    (
        "negative pause threshold",
        lambda t: setattr(t.policies, "pause_after_failures", -1),
        "INVALID_LIMIT",
        "trigger.policies.pause_after_failures",
    ),
    (
        "too many attempts",
        lambda t: setattr(t.policies.retry, "max_attempts", 101),
        "INVALID_RETRY",
        "trigger.policies.retry.max_attempts",
    ),
    (
        "negative attempts",
        lambda t: setattr(t.policies.retry, "max_attempts", -1),
        "INVALID_RETRY",
        "trigger.policies.retry.max_attempts",
    ),
    (
        "negative catch-up cap",
        lambda t: setattr(t.policies.catchup, "max_fires", -1),
        "INVALID_LIMIT",
        "trigger.policies.catchup.max_fires",
    ),
    (
        "notify url not http",
        lambda t: setattr(t.policies, "notify_url", "mailto:ops@example.com"),
        "INVALID_NOTIFY_URL",
        "trigger.policies.notify_url",
    ),
    (
        "notify url relative",
        lambda t: setattr(t.policies, "notify_url", "/callbacks"),
        "INVALID_NOTIFY_URL",
        "trigger.policies.notify_url",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "reason", "field"), [r[1:] for r in TRIGGER_RULES], ids=[r[0] for r in TRIGGER_RULES]
)
def test_each_trigger_rule(mutate, reason: str, field: str) -> None:
    trigger = base_trigger()
    validate_trigger(trigger, ANCHOR)  # valid before the change
    mutate(trigger)
    assert_trigger_rejected(trigger, reason, field)


def test_template_size_counts_bytes() -> None:
    trigger = base_trigger()
    trigger.action.input_template.update({"k": "x" * (MAX_TEMPLATE_BYTES - 100)})
    assert trigger.action.input_template.ByteSize() <= MAX_TEMPLATE_BYTES
    validate_trigger(trigger, ANCHOR)
    trigger.action.input_template.update({"k": "é" * (MAX_TEMPLATE_BYTES // 2)})  # 2 bytes each
    assert_trigger_rejected(trigger, "TEMPLATE_TOO_LARGE", "trigger.action.input_template")


def test_first_problem_is_reported() -> None:
    trigger = base_trigger()
    trigger.display_name = "x" * 1000
    trigger.action.agent = "bad"
    assert_trigger_rejected(trigger, "FIELD_TOO_LONG", "trigger.display_name")


# ---------------------------------------------------------------- webhooks


def test_valid_webhook_passes() -> None:
    validate_webhook(base_webhook())
    validate_webhook(webhook_pb2.Webhook())
    webhook = base_webhook()
    webhook.accepted_event_types[:] = ["e"] * MAX_ACCEPTED_EVENT_TYPES
    webhook.display_name = "x" * MAX_DISPLAY_NAME
    validate_webhook(webhook)


WEBHOOK_RULES: list[tuple[str, Callable[[webhook_pb2.Webhook], object], str, str]] = [
    (
        "display name too long",
        lambda w: setattr(w, "display_name", "x" * (MAX_DISPLAY_NAME + 1)),
        "FIELD_TOO_LONG",
        "webhook.display_name",
    ),
    ("owner malformed", lambda w: setattr(w, "owner", "sam"), "INVALID_OWNER", "webhook.owner"),
    (
        "too many event types",
        lambda w: w.accepted_event_types.extend(["e"] * (MAX_ACCEPTED_EVENT_TYPES - 1)),
        "TOO_MANY_EVENT_TYPES",
        "webhook.accepted_event_types",
    ),
    (
        "empty event type",
        lambda w: w.accepted_event_types.append(""),
        "INVALID_EVENT_TYPE",
        "webhook.accepted_event_types[2]",
    ),
    (
        "event type too long",
        lambda w: w.accepted_event_types.insert(1, "x" * 201),
        "INVALID_EVENT_TYPE",
        "webhook.accepted_event_types[1]",
    ),
    (
        "mapping path with spaces",
        lambda w: w.field_mapping.update({"contact phone": "phone"}),
        "INVALID_FIELD_PATH",
        "webhook.field_mapping",
    ),
    (
        "mapping path with empty segment",
        lambda w: w.field_mapping.update({"contact..phone": "phone"}),
        "INVALID_FIELD_PATH",
        "webhook.field_mapping",
    ),
    (
        "mapping to dotted input field",
        lambda w: w.field_mapping.update({"contact.email": "contact.email"}),
        "INVALID_FIELD_NAME",
        "webhook.field_mapping",
    ),
    (
        "mapping to empty input field",
        lambda w: w.field_mapping.update({"contact.email": ""}),
        "INVALID_FIELD_NAME",
        "webhook.field_mapping",
    ),
    (
        "negative rate",
        lambda w: setattr(w.rate_limit, "requests_per_second", -0.5),
        "INVALID_RATE_LIMIT",
        "webhook.rate_limit",
    ),
    ("negative burst", lambda w: setattr(w.rate_limit, "burst", -1), "INVALID_RATE_LIMIT", "webhook.rate_limit"),
]


@pytest.mark.parametrize(
    ("mutate", "reason", "field"), [r[1:] for r in WEBHOOK_RULES], ids=[r[0] for r in WEBHOOK_RULES]
)
def test_each_webhook_rule(mutate, reason: str, field: str) -> None:
    webhook = base_webhook()
    validate_webhook(webhook)
    mutate(webhook)
    assert_webhook_rejected(webhook, reason, field)


# ---------------------------------------------------------------- inputs that once slipped through


@pytest.mark.parametrize("url", ["http://[::1", "https://]example.com/"])
def test_unparseable_urls_are_invalid_argument(url: str) -> None:
    trigger = base_trigger()
    trigger.policies.notify_url = url
    assert_trigger_rejected(trigger, "INVALID_NOTIFY_URL", "trigger.policies.notify_url")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda t: setattr(t.action, "agent", "agents/digest\n"), "trigger.action.agent"),
        (lambda t: setattr(t.action.runner.nats, "subject", "agents.digest\n"), "trigger.action.runner.nats.subject"),
        (lambda t: setattr(t.source.event, "event_type", "thread.created\n"), "trigger.source.event.event_type"),
    ],
)
def test_trailing_newline_is_rejected(mutate, field: str) -> None:
    trigger = base_trigger()
    mutate(trigger)
    error = rejected(lambda: validate_trigger(trigger, ANCHOR))
    assert error.violations[0].field == field


# ---------------------------------------------------------------- fuzz
#
# Each field is drawn from values that pass (most of the time) or from arbitrary values, so the fuzzer reaches
# every rule, including the late ones, instead of stopping at the first field.

printable = st.text(max_size=40)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def mostly(valid: st.SearchStrategy, arbitrary: st.SearchStrategy) -> st.SearchStrategy:
    """`valid` nine times in ten, else `arbitrary`."""
    return st.integers(0, 9).flatmap(lambda i: arbitrary if i == 9 else valid)


dotted = st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){0,3}", fullmatch=True)
cron_field = st.one_of(
    st.sampled_from(["*", "*/5", "0", "9", "1-5", "MON-FRI", "L", "MON#2", "?", "60", "1,2,3", "5-1", "JAN", "*/0"]),
    st.text(alphabet="0123456789*/,-?#LW@ ", max_size=6),
)
cron_expression = mostly(
    st.one_of(
        st.sampled_from(["0 9 * * *", "*/15 * * * *", "0 0 1 * *", "30 2 * * SUN", "0 0 * * * *", "@daily"]),
        st.lists(cron_field, min_size=5, max_size=6).map(" ".join),
    ),
    st.one_of(printable, st.lists(cron_field, max_size=8).map(" ".join), st.sampled_from(["@reboot", "", "@"])),
)
timezone = mostly(
    st.sampled_from(["", "UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"]),
    st.one_of(printable, st.sampled_from(["../etc/passwd", "EST5EDT", "Etc/GMT+14", "/", "a" * 300])),
)
arbitrary_url = st.one_of(
    printable,
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["http://", "https://", "ftp://", "http:", ""]),
        st.sampled_from(["", "[", "]", "[::1]", "host:99999", "ex ample.com"]),
        printable,
    ),
)
http_url = mostly(st.sampled_from(["http://agent:8080/run", "https://example.com/hook?x=1"]), arbitrary_url)
notify_url = mostly(st.sampled_from(["", "https://example.com/notify"]), arbitrary_url)
non_negative_duration = st.tuples(st.integers(0, 10**6), st.integers(0, 999_999_999))
any_duration = st.tuples(int64, int32)
timestamp = mostly(st.tuples(st.integers(0, 4_102_444_800), st.integers(0, 999_999_999)), st.tuples(int64, int32))
small = st.integers(0, 100)


def _set(message, values: tuple[int, int]) -> None:
    message.seconds, message.nanos = values


@st.composite
def triggers(draw: st.DrawFn) -> trigger_pb2.Trigger:
    trigger = trigger_pb2.Trigger(
        display_name=draw(mostly(printable, st.text(max_size=250))),
        description=draw(mostly(printable, st.integers(MAX_DESCRIPTION - 10, MAX_DESCRIPTION + 10).map("d".__mul__))),
    )
    trigger.labels.update(
        draw(
            mostly(
                st.dictionaries(printable, printable, max_size=3),
                st.dictionaries(printable, printable, min_size=60, max_size=70),
            )
        )
    )
    kind = draw(mostly(st.sampled_from(["schedule", "webhook", "event"]), st.none()))
    if kind == "schedule":
        schedule = trigger.source.schedule
        schedule.SetInParent()
        spec = draw(mostly(st.sampled_from(["cron", "interval", "one_shot"]), st.none()))
        if spec == "cron":
            schedule.cron.expression = draw(cron_expression)
        elif spec == "interval":
            _set(schedule.interval.every, draw(mostly(st.tuples(st.integers(1, 10**7), st.just(0)), any_duration)))
            if draw(st.booleans()):
                _set(schedule.interval.start_time, draw(timestamp))
            if draw(st.booleans()):
                _set(schedule.interval.end_time, draw(timestamp))
            schedule.interval.start_now = draw(st.booleans())
        elif spec == "one_shot":
            schedule.one_shot.SetInParent()
            if draw(mostly(st.just(True), st.just(False))):
                _set(schedule.one_shot.fire_time, draw(timestamp))
        schedule.timezone = draw(timezone)
        if draw(st.booleans()):
            _set(schedule.jitter, draw(mostly(non_negative_duration, any_duration)))
        schedule.dst_gap_rule = draw(mostly(st.integers(0, 2), int32))
        schedule.dst_overlap_rule = draw(mostly(st.integers(0, 3), int32))
    elif kind == "webhook":
        trigger.source.webhook.SetInParent()
    elif kind == "event":
        trigger.source.event.event_type = draw(mostly(dotted, printable))
        for path in draw(st.lists(mostly(dotted, printable), max_size=3)):
            condition = trigger.source.event.filter.add(path=path)
            test = draw(mostly(st.sampled_from(["equals", "in", "exists"]), st.none()))
            if test == "equals":
                condition.equals.string_value = draw(printable)
            elif test == "in":
                getattr(condition, "in").SetInParent()
            elif test == "exists":
                condition.exists = draw(st.booleans())
    action = trigger.action
    action.agent = draw(mostly(st.from_regex(r"agents/[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True), printable))
    action.owner = draw(mostly(st.sampled_from(["", "users/sam", "serviceAccounts/ci@x.io"]), printable))
    action.prompt = draw(mostly(printable, st.integers(MAX_PROMPT - 5, MAX_PROMPT + 5).map("p".__mul__)))
    action.agent_version = draw(mostly(st.integers(0, 2), int32))
    if draw(st.booleans()):
        template = struct_pb2.Struct()
        template.update(draw(st.dictionaries(printable, st.one_of(printable, st.integers(-1000, 1000)), max_size=4)))
        action.input_template.CopyFrom(template)
    runner = draw(mostly(st.sampled_from(["http", "nats", "python"]), st.none()))
    if runner == "http":
        action.runner.http.url = draw(http_url)
    elif runner == "nats":
        action.runner.nats.subject = draw(mostly(st.one_of(st.just(""), dotted), printable))
    elif runner == "python":
        action.runner.python.entry_point = draw(mostly(st.builds("{}:{}".format, dotted, dotted), printable))
    policies = trigger.policies
    if draw(st.booleans()):
        _set(policies.attempt_deadline, draw(mostly(non_negative_duration, any_duration)))
    policies.max_runs_per_day = draw(mostly(small, int32))
    policies.pause_after_failures = draw(mostly(small, int32))
    policies.retry.max_attempts = draw(mostly(small, int32))
    policies.catchup.max_fires = draw(mostly(small, int32))
    policies.catchup.mode = draw(mostly(st.integers(0, 3), int32))
    if draw(st.booleans()):
        _set(policies.catchup.window, draw(mostly(non_negative_duration, any_duration)))
    policies.overlap = draw(mostly(st.integers(0, 4), int32))
    policies.notify_url = draw(notify_url)
    return trigger


@st.composite
def webhooks(draw: st.DrawFn) -> webhook_pb2.Webhook:
    webhook = webhook_pb2.Webhook(
        display_name=draw(mostly(printable, st.text(max_size=250))),
        owner=draw(mostly(st.sampled_from(["", "users/sam"]), printable)),
    )
    webhook.auth_mode = draw(mostly(st.integers(0, 3), int32))
    webhook.accepted_event_types.extend(
        draw(
            mostly(
                st.lists(dotted, max_size=5),
                st.one_of(
                    st.lists(st.text(max_size=8), max_size=5),
                    st.integers(MAX_ACCEPTED_EVENT_TYPES - 2, MAX_ACCEPTED_EVENT_TYPES + 2).map(["e"].__mul__),
                    st.integers(198, 202).map(lambda n: ["ok", "x" * n]),
                ),
            )
        )
    )
    input_field = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
    webhook.field_mapping.update(
        draw(st.dictionaries(mostly(dotted, printable), mostly(input_field, printable), max_size=5))
    )
    webhook.rate_limit.requests_per_second = draw(mostly(st.floats(0, 1000), st.floats()))
    webhook.rate_limit.burst = draw(mostly(small, int32))
    return webhook


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(triggers())
def test_validate_trigger_only_raises_invalid_argument(trigger: trigger_pb2.Trigger) -> None:
    try:
        result = validate_trigger(trigger, ANCHOR)
    except KairosError as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason and error.reason == error.reason.upper()
        assert error.violations and error.violations[0].field.startswith("trigger.")
        return
    source = trigger.source.WhichOneof("kind")
    if source == "schedule":
        assert isinstance(result, Schedule)
    else:
        assert result is None and source in ("webhook", "event")


@settings(FUZZ, max_examples=200)
@given(webhooks())
def test_validate_webhook_only_raises_invalid_argument(webhook: webhook_pb2.Webhook) -> None:
    try:
        validate_webhook(webhook)
    except KairosError as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.violations and error.violations[0].field.startswith("webhook.")
