"""Scheduler progress against a real nats-server: one document per shard, the per-trigger keys older schedulers
wrote still honoured, a paused trigger keeping its progress and a deleted one leaving the document.

The engine runs in the test's loop with every shard held (no leases), fed trigger records directly, as the
change feed would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest_asyncio
from nats.js.kv import KeyValue

from kairos.core import messaging
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.scheduler.engine import NUM_SHARDS, SchedulerEngine
from kairos.scheduler.state import (
    Progress,
    SchedulerState,
    decode_shard_progress,
    progress_key,
    read_progress,
    shard_of,
)
from kairos.v1 import trigger_pb2

WAIT_S = 20
WORKSPACE = "acme"


@pytest_asyncio.fixture
async def bucket(tmp_path: Path) -> AsyncIterator[tuple[object, KeyValue]]:
    async with EmbeddedNatsServer(tmp_path / "nats") as server:
        nc = await messaging.connect(server.url, "test-progress")
        try:
            buckets = await messaging.ensure_all(nc.jetstream())
            yield nc, buckets.scheduler
        finally:
            await nc.close()


def one_shot(trigger_id: str, fire_at: datetime, changed_at: datetime, *, active: bool = True) -> bytes:
    state = trigger_pb2.TriggerState
    trigger = trigger_pb2.Trigger(
        name=f"workspaces/{WORKSPACE}/triggers/{trigger_id}",
        state=state.TRIGGER_STATE_ACTIVE if active else state.TRIGGER_STATE_PAUSED,
        revision=1,
    )
    trigger.action.agent = "agents/test"
    trigger.create_time.FromDatetime(changed_at)
    trigger.update_time.FromDatetime(changed_at)
    trigger.source.schedule.one_shot.fire_time.FromDatetime(fire_at)
    return trigger.SerializeToString()


def same_shard_ids(count: int) -> list[str]:
    """Trigger ids whose feed keys fall in one shard."""
    by_shard: dict[int, list[str]] = {}
    for index in range(10_000):
        trigger_id = f"t_{index:05d}"
        ids = by_shard.setdefault(shard_of(f"{WORKSPACE}.{trigger_id}"), [])
        ids.append(trigger_id)
        if len(ids) == count:
            return ids
    raise AssertionError("unreachable")


async def shard_document_where(kv: KeyValue, shard: int, predicate) -> dict:
    """Follows the shard's progress document until `predicate(triggers)` holds (bounded by WAIT_S)."""
    watcher = await kv.watch(progress_key(shard))
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                entry = await watcher.updates(timeout=WAIT_S)
                if entry is not None and entry.value:
                    triggers = decode_shard_progress(entry.value)
                    if predicate(triggers):
                        return triggers
    finally:
        await watcher.stop()


async def test_progress_per_shard_reads_old_keys_keeps_paused_and_drops_deleted(bucket) -> None:
    nc, kv = bucket
    now = datetime.now(UTC).replace(microsecond=0)
    due, changed = now - timedelta(minutes=1), now - timedelta(minutes=2)
    fired_id, legacy_id, other_id = same_shard_ids(3)
    shard = shard_of(f"{WORKSPACE}.{fired_id}")
    # An older scheduler already fired `legacy` and saved that in its own key.
    await kv.put(f"{WORKSPACE}.{legacy_id}", Progress(due, 2).encode())
    fires = await nc.subscribe(f"kairos.fire.{WORKSPACE}.>")

    state = SchedulerState(nc.jetstream(), kv)
    await state.start()
    engine = SchedulerEngine(nc, state, "test")
    for trigger_id in (fired_id, legacy_id, other_id):
        engine.on_trigger(f"{WORKSPACE}.{trigger_id}", one_shot(trigger_id, due, changed))
    await engine.start()
    try:
        for held in range(NUM_SHARDS):
            engine.acquire(held, late_since=None)
        fired_key, legacy_key, other_key = (f"{WORKSPACE}.{i}" for i in (fired_id, legacy_id, other_id))
        due_us = int(due.timestamp()) * 1_000_000
        triggers = await shard_document_where(kv, shard, lambda t: {fired_key, other_key} <= set(t))
        assert triggers[fired_key] == [due_us, 0] and triggers[other_key] == [due_us, 0]
        assert triggers[legacy_key] == [due_us, 2], "the old per-trigger progress moves into the shard document"
        assert (await read_progress(kv, fired_key)) == Progress(due, 0)
        assert (await read_progress(kv, legacy_key)) == Progress(due, 2)

        engine.on_trigger(fired_key, one_shot(fired_id, due, now, active=False))  # paused
        engine.on_trigger(other_key, None)  # deleted: the shard's document is written again
        triggers = await shard_document_where(kv, shard, lambda t: other_key not in t)
        assert triggers[fired_key] == [due_us, 0], "a paused trigger keeps its progress"
    finally:
        await engine.stop()
        await state.stop()
    assert engine.fires_published == 2, "the trigger an older scheduler had fired is not fired again"
    received = [(await fires.next_msg(timeout=WAIT_S)).subject for _ in range(2)]
    assert sorted(received) == sorted(f"kairos.fire.{WORKSPACE}.{i}" for i in (fired_id, other_id))
    assert (await nc.jetstream().stream_info(messaging.FIRES_STREAM)).state.messages == 2
