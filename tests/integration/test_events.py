"""Platform events published on NATS (`kairos.events.<workspace>.<event_type>`) fire every matching active event
trigger of that workspace once, through the ingress's durable consumer; ListEventTypes lists the types a
workspace used. Against the whole suite in-process (real NATS, SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import orjson
import pytest
from google.protobuf import json_format, struct_pb2

from kairos.client import error_details, event_trigger
from kairos.core import messaging
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.devtools.suite import running_suite, traces_of
from kairos.ingress.events import EVENTS_CONSUMER, EventTypeCatalog
from kairos.v1 import (
    event_service_pb2,
    run_pb2,
    run_service_pb2,
    trigger_pb2,
    trigger_service_pb2,
)

RUN_TIMEOUT_S = 15.0


async def create(kairos, trigger: trigger_pb2.Trigger) -> trigger_pb2.Trigger:
    return (await kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=trigger))).trigger


def with_filter(trigger: trigger_pb2.Trigger, path: str, equals: str) -> trigger_pb2.Trigger:
    trigger.source.event.filter.add(path=path, equals=struct_pb2.Value(string_value=equals))
    return trigger


async def recorded(js, workspace: str, event_type: str) -> None:
    """Returns once the ingress recorded that `workspace` used `event_type` (after firing for it)."""
    kv = await js.key_value(messaging.EVENT_TYPES_BUCKET)
    watcher = await kv.watch(EventTypeCatalog.key(workspace, event_type))
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            async for entry in watcher:
                if entry is not None and entry.value:
                    return
    finally:
        await watcher.stop()


async def test_nats_events_fire_matching_triggers_once(suite) -> None:
    key = await suite.new_workspace("plat")
    other_key = await suite.new_workspace("elsewhere")
    joined = "thread.member_joined"
    async with (
        suite.client(key) as kairos,
        suite.client(other_key) as other,
        traces_of(suite, "plat") as traces,
    ):
        everyone = await create(kairos, event_trigger(joined, prompt="greet"))
        sales = await create(kairos, with_filter(event_trigger(joined), "thread.channel", "sales"))
        support = await create(kairos, with_filter(event_trigger(joined), "thread.channel", "support"))
        await create(kairos, event_trigger("email.received"))
        foreign = await create(other, event_trigger(joined))
        js = traces.nc.jetstream()
        data = {"thread": {"channel": "sales", "id": "th_1"}, "member": "ada"}

        ack = await js.publish(
            messaging.event_subject("plat", joined), orjson.dumps(data), headers={messaging.MSG_ID_HEADER: "ev-1"}
        )
        await recorded(js, "plat", joined)
        fired = [everyone.name, sales.name]
        for trigger in fired:
            ended = await traces.run_ended(f"{trigger}@event:ev-1")
            run = (await kairos.runs.GetRun(run_service_pb2.GetRunRequest(name=ended.run))).run
            assert run.trigger_type == run_pb2.TriggerType.TRIGGER_TYPE_EVENT and run.event_type == joined
            assert json_format.MessageToDict(run.payload) == {"trigger": joined, "payload": data}
        for trigger, count in ((everyone, 1), (sales, 1), (support, 0), (foreign, 0)):
            workspace, trigger_id = trigger.name.split("/")[1], trigger.name.split("/")[3]
            subject = messaging.fire_subject(workspace, trigger_id)
            info = await js.stream_info(messaging.FIRES_STREAM, subjects_filter=subject)
            assert (info.state.subjects or {}).get(subject, 0) == count, trigger.name

        # without Nats-Msg-Id the event id is the stream sequence; a repeat of ev-1 is dropped by the stream
        repeat = await js.publish(
            messaging.event_subject("plat", joined), orjson.dumps(data), headers={messaging.MSG_ID_HEADER: "ev-1"}
        )
        assert repeat.duplicate and repeat.seq == ack.seq
        anonymous = await js.publish(messaging.event_subject("plat", joined), orjson.dumps({"member": "bob"}))
        await traces.run_ended(f"{everyone.name}@event:seq{anonymous.seq}")
        runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=everyone.name))).runs
        assert sorted(r.fire_id for r in runs) == sorted(
            [f"{everyone.name}@event:ev-1", f"{everyone.name}@event:seq{anonymous.seq}"]
        )

        # the catalog: built-in types with descriptions, plus what this workspace used (and only this one)
        await js.publish(messaging.event_subject("plat", "invoice.overdue"), b"{}")
        await recorded(js, "plat", "invoice.overdue")
        published = await kairos.events.PublishEvent(
            event_service_pb2.PublishEventRequest(event_type="custom.thing", event_id="ev-9")
        )
        assert published.event_id == "ev-9" and list(published.fire_ids) == []
        listed = await kairos.events.ListEventTypes(event_service_pb2.ListEventTypesRequest())
        types = {t.type: t for t in listed.event_types}
        assert types["email.received"].builtin and types["email.received"].description
        assert not types["invoice.overdue"].builtin and not types["custom.thing"].builtin
        elsewhere = await other.events.ListEventTypes(event_service_pb2.ListEventTypesRequest())
        assert "invoice.overdue" not in {t.type for t in elsewhere.event_types}
        assert "custom.thing" not in {t.type for t in elsewhere.event_types}
        first = await kairos.events.ListEventTypes(event_service_pb2.ListEventTypesRequest(page_size=3))
        rest = await kairos.events.ListEventTypes(
            event_service_pb2.ListEventTypesRequest(page_token=first.next_page_token)
        )
        assert [t.type for t in first.event_types] + [t.type for t in rest.event_types] == sorted(types)
        assert len(first.event_types) == 3 and not rest.next_page_token


async def test_events_that_can_never_fire_are_dropped_not_redelivered(tmp_path: Path) -> None:
    """An event whose subject names no workspace id, whose payload is not JSON, or whose fire NATS could not carry
    is dropped with a warning. Such an event once went back to the consumer every second, for ever (the first
    because its workspace token made no valid KV key for the event-type catalog). Through PublishEvent, a fire
    too large is INVALID_ARGUMENT (it was UNAVAILABLE, "retry", which could never succeed). An event type no
    trigger can name (`Thread.Created`: triggers take dot-separated lowercase words) is dropped too, and refused by
    PublishEvent with INVALID_EVENT_TYPE: both were accepted, fired nothing, and listed the type in the catalog.
    On a nats-server with a 64 KiB max payload, so the events that are too large stay small."""
    max_payload = 64 * 1024
    async with (
        EmbeddedNatsServer(tmp_path / "nats", max_payload=max_payload) as nats_server,
        running_suite(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'kairos.db'}", nats_url=nats_server.url) as suite,
    ):
        key = await suite.new_workspace("poison")
        created = "thread.created"
        async with suite.client(key) as kairos, traces_of(suite, "poison") as traces:
            trigger = await create(kairos, event_trigger(created, prompt="p"))
            js = traces.nc.jetstream()
            subject = messaging.event_subject("poison", created)
            await js.publish(f"{messaging.EVENT_SUBJECT_PREFIX}.w$x.{created}", b"{}")
            await js.publish(subject, b"not json")
            await js.publish(subject, b'{"pad": "%s"}' % (b"x" * (max_payload - 100)))
            await js.publish(messaging.event_subject("poison", "Thread.Created"), b"{}")
            last = await js.publish(subject, b"{}", headers={messaging.MSG_ID_HEADER: "ev-ok"})
            await traces.run_ended(f"{trigger.name}@event:ev-ok")
            async with asyncio.timeout(RUN_TIMEOUT_S):
                while True:  # the ingress acknowledges (or drops) an event after its fires are stored: bounded poll
                    consumer = await js.consumer_info(messaging.EVENTS_STREAM, EVENTS_CONSUMER)
                    if consumer.ack_floor.stream_seq >= last.seq:
                        break
                    await asyncio.sleep(0.05)
            assert consumer.num_redelivered == 0 and consumer.num_ack_pending == 0
            catalog = await js.key_value(messaging.EVENT_TYPES_BUCKET)  # written before an event is acknowledged
            assert await catalog.keys() == [EventTypeCatalog.key("poison", created)]
            fired = f"{messaging.FIRE_SUBJECT_PREFIX}.poison.>"
            assert (await js.stream_info(messaging.FIRES_STREAM, subjects_filter=fired)).state.messages == 1

            data = struct_pb2.Struct()
            data.update({"pad": "x" * max_payload})
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await kairos.events.PublishEvent(event_service_pb2.PublishEventRequest(event_type=created, data=data))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_details(refused.value).reason == "EVENT_TOO_LARGE"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await kairos.events.PublishEvent(event_service_pb2.PublishEventRequest(event_type="Thread.Created"))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_details(refused.value).reason == "INVALID_EVENT_TYPE"
