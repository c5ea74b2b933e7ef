"""Pure helpers of the services: webhook body mapping (ingress), run input and envelope (executor),
catch-up and fire ids (scheduler)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kairos.cli import build_parser, trigger_from_args
from kairos.client import equals, event_trigger, exists, one_of, schedule_trigger, webhook_trigger
from kairos.executor.worker import envelope, run_input
from kairos.ingress.endpoint import event_type_of, lookup_path, mapped_fields
from kairos.ingress.events import EventTriggers, condition_holds
from kairos.scheduler.engine import DEFAULT_CATCHUP_MAX_FIRES, catchup_fires, fire_id
from kairos.v1 import fire_pb2, run_pb2, trigger_pb2

TRIGGER = "workspaces/acme/triggers/t_01"

# ---------------------------------------------------------------- ingress: event filters


@pytest.mark.parametrize(
    ("condition", "holds"),
    [
        (equals("thread.channel", "sales"), True),
        (equals("thread.channel", "support"), False),
        (equals("thread.size", 3), True),
        (equals("thread.missing", None), False),
        (one_of("thread.channel", ["support", "sales"]), True),
        (one_of("thread.channel", ["support"]), False),
        (one_of("thread.size", [1, 3]), True),
        (one_of("thread.missing", ["sales"]), False),
        (exists("thread.channel"), True),
        (exists("thread.missing"), False),
        (exists("thread.missing", present=False), True),
        (exists("thread.channel", present=False), False),
        (exists("thread.channel.deeper"), False),
    ],
)
def test_event_filter_conditions(condition: trigger_pb2.FieldCondition, holds: bool) -> None:
    assert condition_holds(condition, {"thread": {"channel": "sales", "size": 3}}) is holds


def test_event_triggers_index_follows_the_mirror() -> None:
    index = EventTriggers()

    def trigger(key: str, event_type: str = "") -> trigger_pb2.Trigger:
        workspace, trigger_id = key.split(".")
        built = event_trigger(event_type) if event_type else webhook_trigger()
        built.name = f"workspaces/{workspace}/triggers/{trigger_id}"
        return built

    joined, created, hook = trigger("a.t1", "thread.joined"), trigger("a.t2", "thread.created"), trigger("a.t3")
    for key, value in (("a.t1", joined), ("a.t2", created), ("a.t3", hook), ("b.t4", trigger("b.t4", "thread.joined"))):
        index.on_change(key, value)
    assert index.of("a", "thread.joined") == [joined]
    assert index.types_of("a") == {"thread.joined", "thread.created"}
    moved = trigger("a.t2", "thread.joined")  # an update that changes the event type moves the trigger
    index.on_change("a.t2", moved)
    assert index.of("a", "thread.joined") == [joined, moved] and index.of("a", "thread.created") == []
    index.on_change("a.t1", None)
    index.on_change("a.t2", trigger("a.t2"))  # no longer an event trigger
    assert index.of("a", "thread.joined") == [] and index.types_of("a") == set()
    assert [t.name for t in index.of("b", "thread.joined")] == ["workspaces/b/triggers/t4"]


def test_cli_event_filter_options_build_the_conditions_in_order() -> None:
    command = (
        "triggers create --event thread.member_joined --equals thread.channel=sales --in member.role=owner,admin "
        '--in thread.size=[1,"2"] --equals thread.size=3 --exists member.name --missing member.bot'
    )
    args = build_parser().parse_args(command.split())
    assert list(trigger_from_args(args).source.event.filter) == [
        equals("thread.channel", "sales"),
        one_of("member.role", ["owner", "admin"]),
        one_of("thread.size", [1, "2"]),
        equals("thread.size", 3),
        exists("member.name"),
        exists("member.bot", present=False),
    ]


def test_cli_every_zero_reaches_the_registry_to_be_refused_instead_of_crashing_the_cli() -> None:
    """`--every 0s` was taken for no schedule at all: 'give exactly one of cron, every or at', a traceback."""
    args = build_parser().parse_args(["triggers", "create", "--every", "0s"])
    schedule = trigger_from_args(args).source.schedule
    assert schedule.WhichOneof("spec") == "interval" and schedule.interval.every.seconds == 0
    with pytest.raises(ValueError, match="exactly one of cron, every or at"):
        schedule_trigger(cron="* * * * *", every=timedelta(0))


# ---------------------------------------------------------------- ingress: event type


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"type": "contact.created"}, "contact.created"),
        ({"event_type": "a"}, "a"),
        ({"event": "b"}, "b"),
        ({"action": "opened"}, "opened"),
        ({"action": "4", "event": "3", "event_type": "2", "type": "1"}, "1"),
        ({"action": "4", "event": "3", "event_type": "2"}, "2"),
        ({"action": "4", "event": "3"}, "3"),
        ({"type": "", "event_type": "second"}, "second"),
        ({"type": None, "event_type": 7, "event": {"name": "x"}, "action": "fourth"}, "fourth"),
        ({"type": ["list"], "event": True}, ""),
        ({"type": "", "event_type": "", "event": "", "action": ""}, ""),
        ({"kind": "nope", "Type": "nope"}, ""),
        ({}, ""),
        ([{"type": "in.a.list"}], ""),
        ("type", ""),
        (None, ""),
        (42, ""),
        (b'{"type": "x"}', ""),
    ],
)
def test_event_type_of(body, expected: str) -> None:
    assert event_type_of(body) == expected


# ---------------------------------------------------------------- ingress: dot paths

BODY = {
    "id": "evt_1",
    "contact": {"phone": "+15550100", "email": None, "address": {"city": "Lyon", "zip": 69001}},
    "items": [{"sku": "a"}],
    "flags": {"vip": False, "score": 0},
    "dotted.key": "unreachable",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("id", (True, "evt_1")),
        ("contact.phone", (True, "+15550100")),
        ("contact.address.city", (True, "Lyon")),
        ("contact.address", (True, {"city": "Lyon", "zip": 69001})),
        ("contact.email", (True, None)),  # present but null is found
        ("flags.vip", (True, False)),
        ("flags.score", (True, 0)),
        ("items", (True, [{"sku": "a"}])),
        ("items.0", (False, None)),  # lists are not indexed
        ("items.0.sku", (False, None)),
        ("contact.fax", (False, None)),
        ("contact.phone.country", (False, None)),  # through a string
        ("contact.address.zip.code", (False, None)),  # through a number
        ("missing.deeper", (False, None)),
        ("dotted.key", (False, None)),
        ("", (False, None)),
        ("contact.", (False, None)),
    ],
)
def test_lookup_path(path: str, expected: tuple[bool, object]) -> None:
    assert lookup_path(BODY, path) == expected


@pytest.mark.parametrize("body", [None, "text", 3, ["contact"], [{"contact": {"phone": "1"}}]])
def test_lookup_path_on_non_objects(body) -> None:
    assert lookup_path(body, "contact") == (False, None)
    assert lookup_path(body, "contact.phone") == (False, None)


def test_mapped_fields_maps_found_paths_and_skips_missing() -> None:
    mapping = {
        "contact.phone": "phone_to",
        "contact.address.city": "city",
        "contact.email": "email",
        "contact.fax": "fax",
        "nothing.here": "nothing",
        "flags.vip": "vip",
    }
    assert mapped_fields(BODY, mapping) == {"phone_to": "+15550100", "city": "Lyon", "email": None, "vip": False}


def test_mapped_fields_edge_cases() -> None:
    assert mapped_fields(BODY, {}) == {}
    assert mapped_fields(["not", "an", "object"], {"a": "a"}) == {}
    assert mapped_fields({"a": {"b": 1}}, {"a": "whole"}) == {"whole": {"b": 1}}


# ---------------------------------------------------------------- executor: run input


def _fire(**fields) -> fire_pb2.FireRequest:
    return fire_pb2.FireRequest(trigger=TRIGGER, **fields)


def test_run_input_template_prompt_and_overrides() -> None:
    fire = _fire()
    fire.action.input_template.update({"tone": "formal", "limit": 3, "nested": {"a": 1}})
    fire.action.prompt = "Summarise"
    fire.input_overrides.update({"tone": "casual", "extra": True})
    assert run_input(fire) == {
        "tone": "casual",  # the override wins
        "limit": 3,
        "nested": {"a": 1},
        "prompt": "Summarise",
        "extra": True,
    }


def test_run_input_override_beats_the_prompt() -> None:
    fire = _fire()
    fire.action.prompt = "from the action"
    fire.input_overrides.update({"prompt": "from the fire"})
    assert run_input(fire) == {"prompt": "from the fire"}


def test_run_input_without_prompt_or_template() -> None:
    assert run_input(_fire()) == {}
    fire = _fire()
    fire.action.prompt = "only a prompt"
    assert run_input(fire) == {"prompt": "only a prompt"}
    fire = _fire()
    fire.input_overrides.update({"x": "y"})
    assert run_input(fire) == {"x": "y"}


def test_run_input_does_not_share_state_between_calls() -> None:
    fire = _fire()
    fire.action.input_template.update({"list": [1, 2]})
    first = run_input(fire)
    first["list"].append(3)
    assert run_input(fire) == {"list": [1, 2]}


# ---------------------------------------------------------------- executor: envelope

ENVELOPE_KEYS = {
    "trigger_type",
    "trigger",
    "run",
    "fire_id",
    "scheduled_at",
    "fired_at",
    "attempt",
    "owner",
    "agent",
    "agent_version",
    "input",
    "payload",
}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$")


def test_envelope_of_a_schedule_fire() -> None:
    scheduled = datetime(2025, 3, 3, 14, 0, tzinfo=UTC)
    fire = _fire(
        fire_id=fire_id(TRIGGER, scheduled),
        trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE,
    )
    fire.scheduled_time.FromDatetime(scheduled)
    fire.fire_time.FromDatetime(scheduled + timedelta(milliseconds=12, microseconds=345))
    fire.action.agent = "agents/digest"
    fire.action.owner = "users/sam"
    fire.action.prompt = "Summarise"
    run = f"{TRIGGER}/runs/r_1"
    document = envelope(fire, run, 2, run_input(fire))
    assert set(document) == ENVELOPE_KEYS
    assert document == {
        "trigger_type": "schedule",
        "trigger": TRIGGER,
        "run": run,
        "fire_id": "workspaces/acme/triggers/t_01@2025-03-03T14:00:00Z",
        "scheduled_at": "2025-03-03T14:00:00Z",
        "fired_at": "2025-03-03T14:00:00.012345Z",
        "attempt": 2,
        "owner": "users/sam",
        "agent": "agents/digest",
        "agent_version": "stable",
        "input": {"prompt": "Summarise"},
        "payload": None,
    }
    for key in ("scheduled_at", "fired_at"):
        assert ISO_Z.match(document[key]), document[key]
    json.dumps(document)  # it is a JSON document


def test_envelope_of_a_webhook_fire() -> None:
    fire = _fire(
        fire_id="msg_2",
        trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK,
        webhook="workspaces/acme/webhooks/wh_1",
        event_type="contact.created",
    )
    fire.fire_time.FromDatetime(datetime(2025, 1, 1, tzinfo=UTC))
    fire.action.agent = "agents/sdr"
    fire.action.agent_version = trigger_pb2.AgentVersion.AGENT_VERSION_DRAFT
    fire.payload_json = b'{"type": "contact.created", "contact": {"phone": "+1"}}'
    document = envelope(fire, "r", 1, {"phone_to": "+1"})
    assert set(document) == ENVELOPE_KEYS | {"webhook", "event_type"}
    assert document["trigger_type"] == "webhook"
    assert document["webhook"] == "workspaces/acme/webhooks/wh_1"
    assert document["event_type"] == "contact.created"
    assert document["scheduled_at"] is None  # only schedules ask for an instant
    assert document["fired_at"] == "2025-01-01T00:00:00Z"
    assert document["owner"] is None
    assert document["agent_version"] == "draft"
    assert document["payload"] == {"type": "contact.created", "contact": {"phone": "+1"}}
    assert document["input"] == {"phone_to": "+1"}


@pytest.mark.parametrize(
    ("trigger_type", "name"),
    [
        (run_pb2.TriggerType.TRIGGER_TYPE_SCHEDULE, "schedule"),
        (run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK, "webhook"),
        (run_pb2.TriggerType.TRIGGER_TYPE_EVENT, "event"),
        (run_pb2.TriggerType.TRIGGER_TYPE_MANUAL, "manual"),
        (run_pb2.TriggerType.TRIGGER_TYPE_UNSPECIFIED, "unknown"),
    ],
)
def test_envelope_trigger_types(trigger_type: int, name: str) -> None:
    document = envelope(_fire(trigger_type=trigger_type), "r", 1, {})
    assert document["trigger_type"] == name
    assert set(document) == ENVELOPE_KEYS
    assert document["scheduled_at"] is None and document["fired_at"] is None


def test_envelope_payload_scalars() -> None:
    fire = _fire()
    fire.payload.string_value = "raw text body"
    assert envelope(fire, "r", 1, {})["payload"] == "raw text body"
    fire.payload.list_value.values.add(number_value=1)
    assert envelope(fire, "r", 1, {})["payload"] == [1]


# ---------------------------------------------------------------- scheduler: catch-up

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _missed(*minutes_ago: int) -> list[datetime]:
    return [NOW - timedelta(minutes=m) for m in minutes_ago]


def _trigger(mode: int = 0, window: timedelta | None = None, max_fires: int = 0) -> trigger_pb2.Trigger:
    trigger = trigger_pb2.Trigger(name=TRIGGER)
    trigger.policies.catchup.mode = mode
    trigger.policies.catchup.max_fires = max_fires
    if window is not None:
        trigger.policies.catchup.window.FromTimedelta(window)
    return trigger


Mode = trigger_pb2.CatchupMode


def test_catchup_default_is_latest_within_one_hour() -> None:
    missed = _missed(90, 61, 60, 30, 5)
    assert catchup_fires(_trigger(), missed, NOW) == (_missed(5), 4)
    assert catchup_fires(_trigger(Mode.CATCHUP_MODE_LATEST), missed, NOW) == (_missed(5), 4)


def test_catchup_latest_outside_the_window_fires_nothing() -> None:
    assert catchup_fires(_trigger(), _missed(180, 120, 61), NOW) == ([], 3)


def test_catchup_all_fires_each_recent_instant() -> None:
    missed = _missed(90, 61, 60, 30, 5)
    assert catchup_fires(_trigger(Mode.CATCHUP_MODE_ALL), missed, NOW) == (_missed(60, 30, 5), 2)


def test_catchup_all_keeps_the_most_recent_max_fires() -> None:
    missed = _missed(50, 40, 30, 20, 10)
    assert catchup_fires(_trigger(Mode.CATCHUP_MODE_ALL, max_fires=2), missed, NOW) == (_missed(20, 10), 3)
    assert catchup_fires(_trigger(Mode.CATCHUP_MODE_ALL, max_fires=1), missed, NOW) == (_missed(10), 4)


def test_catchup_all_default_cap() -> None:
    missed = [NOW - timedelta(seconds=s) for s in range(3000, 0, -10)]  # 300 in the last hour
    chosen, skipped = catchup_fires(_trigger(Mode.CATCHUP_MODE_ALL), missed, NOW)
    assert len(chosen) == DEFAULT_CATCHUP_MAX_FIRES == 100
    assert chosen == missed[-100:]
    assert skipped == 200


def test_catchup_none_skips_everything() -> None:
    missed = _missed(30, 5)
    assert catchup_fires(_trigger(Mode.CATCHUP_MODE_NONE), missed, NOW) == ([], 2)


def test_catchup_custom_window() -> None:
    missed = _missed(600, 300, 10, 2)
    all_in_day = _trigger(Mode.CATCHUP_MODE_ALL, window=timedelta(days=1))
    assert catchup_fires(all_in_day, missed, NOW) == (missed, 0)
    short = _trigger(Mode.CATCHUP_MODE_ALL, window=timedelta(minutes=5))
    assert catchup_fires(short, missed, NOW) == (_missed(2), 3)
    zero = _trigger(Mode.CATCHUP_MODE_ALL, window=timedelta(0))
    assert catchup_fires(zero, missed, NOW) == ([], 4)


def test_catchup_window_boundary_is_inclusive() -> None:
    assert catchup_fires(_trigger(), _missed(60), NOW) == (_missed(60), 0)
    edge = [NOW - timedelta(hours=1, microseconds=1)]
    assert catchup_fires(_trigger(), edge, NOW) == ([], 1)


def test_catchup_with_nothing_missed() -> None:
    for mode in (Mode.CATCHUP_MODE_LATEST, Mode.CATCHUP_MODE_ALL, Mode.CATCHUP_MODE_NONE):
        assert catchup_fires(_trigger(mode), [], NOW) == ([], 0)


# ---------------------------------------------------------------- scheduler: fire ids


def test_fire_id_format() -> None:
    assert fire_id(TRIGGER, datetime(2025, 3, 3, 14, 0, tzinfo=UTC)) == f"{TRIGGER}@2025-03-03T14:00:00Z"
    assert (
        fire_id(TRIGGER, datetime(2025, 3, 3, 14, 0, 5, 250000, tzinfo=UTC)) == f"{TRIGGER}@2025-03-03T14:00:05.250000Z"
    )


def test_fire_id_is_the_utc_instant_whatever_the_zone() -> None:
    new_york = timezone(timedelta(hours=-5))
    local = datetime(2025, 3, 3, 9, 0, tzinfo=new_york)
    assert fire_id(TRIGGER, local) == f"{TRIGGER}@2025-03-03T14:00:00Z"
    assert fire_id(TRIGGER, local) == fire_id(TRIGGER, local.astimezone(UTC))


def test_fire_ids_differ_per_instant_and_trigger() -> None:
    instant = datetime(2025, 3, 3, 14, 0, tzinfo=UTC)
    ids = {
        fire_id(TRIGGER, instant),
        fire_id(TRIGGER, instant + timedelta(seconds=1)),
        fire_id("workspaces/acme/triggers/t_02", instant),
    }
    assert len(ids) == 3
    trigger, _, stamp = fire_id(TRIGGER, instant).partition("@")
    assert trigger == TRIGGER
    assert datetime.fromisoformat(stamp) == instant
