"""Property-based fuzz of CreateTrigger over real gRPC against the registry (in-process, on its own event loop in a
thread, real NATS, SQLite): random requests, mostly near-valid and sometimes arbitrary, in a workspace with small
quotas. Every answer is OK, INVALID_ARGUMENT (with a field violation) or RESOURCE_EXHAUSTED, never INTERNAL or
UNKNOWN; valid creates then fill both quotas until each refuses with TRIGGER_LIMIT_EXCEEDED; every trigger in
the workspace is one an OK answer named, is valid and complete, and its change-feed entry is the same trigger,
so nothing was half-written."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from kairos.client import error_details, schedule_trigger, webhook_trigger
from kairos.core import db
from kairos.devtools.suite import Suite, running_suite
from kairos.registry.models import OutboxRow, TriggerRow
from kairos.registry.validation import MAX_PROMPT, MAX_TEMPLATE_BYTES, validate_trigger
from kairos.v1 import (
    trigger_pb2,
    trigger_service_pb2,
    trigger_service_pb2_grpc,
    workspace_pb2,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)

WORKSPACE = "fuzz"
QUOTA = workspace_pb2.WorkspaceQuota(max_schedule_triggers=10, max_webhook_event_triggers=10)
EXAMPLES = 150
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
State = trigger_pb2.TriggerState
KNOWN_STATES = {State.TRIGGER_STATE_DRAFT, State.TRIGGER_STATE_ACTIVE, State.TRIGGER_STATE_PAUSED}
CALL_TIMEOUT_S = 30.0


# ------------------------------------------------------------------------------------------------ strategies

text = st.text(max_size=30)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)


def mostly(valid: st.SearchStrategy, arbitrary: st.SearchStrategy) -> st.SearchStrategy:
    """`valid` four times in five, else `arbitrary`, so late rules and the write path are reached."""
    return st.integers(0, 4).flatmap(lambda i: arbitrary if i == 4 else valid)


def set_duration(message, draw: st.DrawFn) -> None:
    message.seconds, message.nanos = draw(
        mostly(st.tuples(st.integers(0, 10**6), st.integers(0, 999_999_999)), st.tuples(int64, int32))
    )


def set_timestamp(message, draw: st.DrawFn) -> None:
    message.seconds, message.nanos = draw(
        mostly(st.tuples(st.integers(1_700_000_000, 4_102_444_800), st.just(0)), st.tuples(int64, int32))
    )


cron = mostly(
    st.sampled_from(["0 9 * * 1-5", "*/5 * * * *", "0 0 1 * *", "@hourly", "0 30 2 * * SUN", "0 0 29 2 *"]),
    st.one_of(
        text, st.lists(st.sampled_from(["*", "*/0", "61", "L", "MON#6", "5-1", "?", "W"]), max_size=7).map(" ".join)
    ),
)
timezone = mostly(
    st.sampled_from(["", "UTC", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]),
    st.one_of(text, st.sampled_from(["../../etc/passwd", "Mars/Olympus", "a" * 500, "UTC\x00"])),
)
word = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
dotted = st.lists(word, min_size=1, max_size=4).map(".".join)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), text)
template = st.one_of(
    st.dictionaries(text, json_scalar, max_size=4),
    st.integers(MAX_TEMPLATE_BYTES // 1000 - 2, MAX_TEMPLATE_BYTES // 1000 + 2).map(
        lambda n: {f"k{i}": "x" * 990 for i in range(n)}
    ),
)


@st.composite
def triggers(draw: st.DrawFn) -> trigger_pb2.Trigger:
    trigger = trigger_pb2.Trigger(
        display_name=draw(mostly(text, st.text(min_size=190, max_size=210))),
        description=draw(text),
        state=draw(mostly(st.sampled_from([0, 1, 2, 3]), int32)),
        state_note=draw(mostly(text, st.integers(990, 1010).map("n".__mul__))),
    )
    if draw(st.booleans()):  # output-only and server-owned fields a client may send anyway
        trigger.name = draw(mostly(st.just("workspaces/other/triggers/t_1"), text))
        trigger.etag, trigger.revision = draw(text), draw(int64)
        trigger.info.fire_count = draw(int64)
        set_timestamp(trigger.create_time, draw)
    trigger.labels.update(draw(mostly(st.dictionaries(word, text, max_size=3), st.dictionaries(text, text))))
    kind = draw(mostly(st.sampled_from(["schedule", "webhook", "event"]), st.none()))
    if kind == "schedule":
        schedule = trigger.source.schedule
        schedule.SetInParent()
        spec = draw(mostly(st.sampled_from(["cron", "interval", "one_shot"]), st.none()))
        if spec == "cron":
            schedule.cron.expression = draw(cron)
        elif spec == "interval":
            set_duration(schedule.interval.every, draw)
            if draw(st.booleans()):
                set_timestamp(schedule.interval.start_time, draw)
            if draw(st.booleans()):
                set_timestamp(schedule.interval.end_time, draw)
            schedule.interval.start_now = draw(st.booleans())
        elif spec == "one_shot":
            schedule.one_shot.SetInParent()
            set_timestamp(schedule.one_shot.fire_time, draw)
        schedule.timezone = draw(timezone)
        if draw(st.booleans()):
            set_duration(schedule.jitter, draw)
        schedule.dst_gap_rule = draw(mostly(st.integers(0, 2), int32))
        schedule.dst_overlap_rule = draw(mostly(st.integers(0, 3), int32))
    elif kind == "webhook":
        trigger.source.webhook.SetInParent()
        if draw(st.booleans()):
            trigger.source.webhook.webhooks.append(draw(text))
    elif kind == "event":
        trigger.source.event.event_type = draw(mostly(dotted, text))
        for path in draw(st.lists(mostly(dotted, text), max_size=2)):
            trigger.source.event.filter.add(path=path).exists = True
    action = trigger.action
    action.agent = draw(mostly(st.from_regex(r"agents/[a-z][a-z0-9-]{0,10}", fullmatch=True), text))
    action.owner = draw(mostly(st.sampled_from(["", "users/sam"]), text))
    action.agent_version = draw(mostly(st.integers(0, 2), int32))
    action.prompt = draw(mostly(text, st.integers(MAX_PROMPT - 2, MAX_PROMPT + 2).map("p".__mul__)))
    if draw(st.booleans()):
        action.input_template.update(draw(template))
    runner = draw(mostly(st.sampled_from(["http", "nats", "python"]), st.none()))
    if runner == "http":
        action.runner.http.url = draw(mostly(st.just("https://agents.example.com/run"), text))
    elif runner == "nats":
        action.runner.nats.subject = draw(mostly(dotted, text))
    elif runner == "python":
        action.runner.python.entry_point = draw(mostly(st.just("kairos.agents.demo:echo"), text))
    policies = trigger.policies
    policies.overlap = draw(mostly(st.integers(0, 4), int32))
    policies.catchup.mode = draw(mostly(st.integers(0, 3), int32))
    policies.catchup.max_fires = draw(mostly(st.integers(0, 10), int32))
    if draw(st.booleans()):
        set_duration(policies.catchup.window, draw)
    policies.retry.max_attempts = draw(mostly(st.integers(0, 10), int32))
    if draw(st.booleans()):
        set_duration(policies.retry.initial_backoff, draw)
        set_duration(policies.retry.max_backoff, draw)
        policies.retry.backoff_multiplier = draw(mostly(st.floats(1, 10), st.floats()))
    if draw(st.booleans()):
        set_duration(policies.attempt_deadline, draw)
    policies.max_runs_per_day = draw(mostly(st.integers(0, 100), int32))
    policies.pause_after_failures = draw(mostly(st.integers(0, 10), int32))
    policies.notify_url = draw(mostly(st.sampled_from(["", "https://example.com/notify"]), text))
    return trigger


create_requests = st.builds(
    trigger_service_pb2.CreateTriggerRequest,
    parent=st.sampled_from(["", f"workspaces/{WORKSPACE}"]),
    trigger=triggers(),
    # a small pool so that retries with the same request_id happen, plus arbitrary and oversize ids
    request_id=mostly(st.sampled_from(["", "", "", "retry-1", "retry-2", "retry-3"]), st.text(max_size=140)),
)


# ------------------------------------------------------------------------------------------------ the registry


@dataclass
class ThreadedRegistry:
    """The registry on its own event loop in a thread, so hypothesis can drive it with a blocking gRPC client."""

    suite: Suite
    loop: asyncio.AbstractEventLoop
    database_url: str

    def run(self, coroutine, timeout: float = CALL_TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ThreadedRegistry]:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'kairos.db'}"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="registry-loop", daemon=True)
    thread.start()
    running = running_suite(tmp_path, database_url, ("registry",))
    try:
        suite = asyncio.run_coroutine_threadsafe(running.__aenter__(), loop).result(60)
        try:
            yield ThreadedRegistry(suite, loop, database_url)
        finally:
            asyncio.run_coroutine_threadsafe(running.__aexit__(None, None, None), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@dataclass
class Ledger:
    """What the fuzzer was told: the triggers OK answers named, and which trigger each request_id created."""

    created: set[str] = field(default_factory=set)
    by_request_id: dict[str, str] = field(default_factory=dict)
    codes: dict[grpc.StatusCode, int] = field(default_factory=dict)


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


async def _counts(database_url: str) -> tuple[int, int]:
    engine = db.create_engine(database_url)
    try:
        async with db.session_factory(engine)() as session:
            triggers = await session.scalar(select(func.count()).select_from(TriggerRow))
            pending = await session.scalar(select(func.count()).select_from(OutboxRow))
    finally:
        await engine.dispose()
    return triggers, pending


def test_create_trigger_fuzz_never_fails_internally_nor_half_writes(registry: ThreadedRegistry) -> None:
    with grpc.insecure_channel(registry.suite.address) as channel:
        admin = workspace_service_pb2_grpc.WorkspaceServiceStub(channel)
        admin.CreateWorkspace(
            workspace_service_pb2.CreateWorkspaceRequest(
                workspace=workspace_pb2.Workspace(name=f"workspaces/{WORKSPACE}", quota=QUOTA)
            ),
            metadata=bearer(registry.suite.admin_key),
        )
        key = admin.CreateApiKey(
            workspace_service_pb2.CreateApiKeyRequest(parent=f"workspaces/{WORKSPACE}"),
            metadata=bearer(registry.suite.admin_key),
        ).key
        triggers = trigger_service_pb2_grpc.TriggerServiceStub(channel)
        ledger = Ledger()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(request=create_requests)
        def create(request: trigger_service_pb2.CreateTriggerRequest) -> None:
            try:
                created = triggers.CreateTrigger(request, metadata=bearer(key), timeout=CALL_TIMEOUT_S).trigger
            except grpc.RpcError as error:
                details = error_details(error)
                ledger.codes[details.code] = ledger.codes.get(details.code, 0) + 1
                assert details.code in ALLOWED, (details, request)
                assert details.reason, details
                if details.code == grpc.StatusCode.INVALID_ARGUMENT:
                    assert details.field_violations, details
                return
            ledger.codes[grpc.StatusCode.OK] = ledger.codes.get(grpc.StatusCode.OK, 0) + 1
            assert created.name.startswith(f"workspaces/{WORKSPACE}/triggers/"), created.name
            if request.request_id:
                first = ledger.by_request_id.setdefault(request.request_id, created.name)
                assert created.name == first, "a repeated request_id created a second trigger"
            ledger.created.add(created.name)

        create()
        assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= set(ledger.codes) <= ALLOWED, ledger.codes

        # However many valid requests the draw held, fill both quotas up with valid triggers: the next create of
        # each kind is refused, and everything created so far is checked below.
        for kind, make, limit in (
            ("schedule", lambda: schedule_trigger(every=timedelta(minutes=5), prompt="x"), QUOTA.max_schedule_triggers),
            ("webhook", lambda: webhook_trigger(prompt="x"), QUOTA.max_webhook_event_triggers),
        ):
            for _ in range(limit + 1):
                request = trigger_service_pb2.CreateTriggerRequest(trigger=make())
                try:
                    created = triggers.CreateTrigger(request, metadata=bearer(key), timeout=CALL_TIMEOUT_S).trigger
                except grpc.RpcError as error:
                    details = error_details(error)
                    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (kind, details)
                    assert details.reason == "TRIGGER_LIMIT_EXCEEDED" and details.metadata["limit"] == str(limit)
                    break
                ledger.created.add(created.name)
            else:
                raise AssertionError(f"{limit + 1} more {kind} triggers were created beyond a quota of {limit}")
        listed, token = [], ""
        while True:
            page = triggers.ListTriggers(
                trigger_service_pb2.ListTriggersRequest(page_size=100, page_token=token), metadata=bearer(key)
            )
            listed.extend(page.triggers)
            token = page.next_page_token
            if not token:
                break
        assert {trigger.name for trigger in listed} == ledger.created
        stored, pending = registry.run(_counts(registry.database_url))
        assert stored == len(ledger.created) and pending == 0

        bucket = registry.suite.runtime.buckets.triggers
        for name in ledger.created:
            trigger = triggers.GetTrigger(
                trigger_service_pb2.GetTriggerRequest(name=name), metadata=bearer(key)
            ).trigger
            assert trigger.name == name and trigger.revision == 1 and trigger.etag == "1"
            assert trigger.HasField("create_time") and trigger.update_time == trigger.create_time
            assert trigger.state in KNOWN_STATES, trigger.state
            assert len(trigger.state_note) <= 1000
            assert trigger.info.fire_count == 0 and not trigger.source.webhook.webhooks
            validate_trigger(trigger, trigger.create_time.ToDatetime(UTC))
            _, workspace, _, trigger_id = name.split("/")
            fed = trigger_pb2.Trigger.FromString(registry.run(bucket.get(f"{workspace}.{trigger_id}")).value)
            trigger.ClearField("info")
            assert fed == trigger
