"""What the scheduler keeps in the `kairos_scheduler` KV bucket, and a live view of it.

Keys:
    `_progress.<shard>`       progress of the triggers of one shard, written by its holder about once a second:
                              `{"v": 1, "triggers": {"<workspace>.<trigger>": [last fired, skipped]}}`, the last
                              instant fired (acknowledged by JetStream) in Unix microseconds (null if none yet) and
                              the count of missed fires the catch-up policy skipped
    `<workspace>.<trigger>`   progress of one trigger as older schedulers wrote it (still read, no longer written)
    `_lease.<shard>`          who holds a shard, renewed every second (see `shards.py`)
    `_replica.<replica id>`   a replica's heartbeat: its shards, scheduled triggers and fire lag

Every replica watches the whole bucket, so it knows every trigger's progress before it takes over a shard,
and sees the leases and heartbeats of the others. Values are JSON documents. `read_progress` reads one
trigger's progress straight from the bucket (tests check the saved progress with it; the registry counts
skipped fires from the `trigger.skipped` trace events instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.js.errors
import orjson
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from kairos.core.messaging import SCHEDULER_BUCKET
from kairos.core.schedule import from_micros, to_micros

log = structlog.get_logger(__name__)

NUM_SHARDS = 64
LEASE_PREFIX = "_lease."
REPLICA_PREFIX = "_replica."
PROGRESS_PREFIX = "_progress."
PROGRESS_VERSION = 1

# One trigger's progress in a shard document: [last instant fired in Unix microseconds or None, skipped].
ProgressEntry = list[int | None]


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def shard_of(key: str, shards: int = NUM_SHARDS) -> int:
    """The shard of a trigger's feed key (`<workspace>.<trigger>`): a stable hash every replica agrees on."""
    return zlib.crc32(key.encode()) % shards


def progress_key(shard: int) -> str:
    return f"{PROGRESS_PREFIX}{shard:03d}"


def encode_shard_progress(triggers: dict[str, ProgressEntry]) -> bytes:
    return orjson.dumps({"v": PROGRESS_VERSION, "triggers": triggers})


def decode_shard_progress(data: bytes | None) -> dict[str, ProgressEntry]:
    """The triggers of a shard progress document; an unreadable document counts as empty (and is logged)."""
    if not data:
        return {}
    try:
        triggers = orjson.loads(data)["triggers"]
        if isinstance(triggers, dict):
            return triggers
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    log.error("unreadable shard progress document; treating it as empty", value=data[:200])
    return {}


@dataclass
class Progress:
    """One trigger's progress: the last instant fired (acknowledged by JetStream) and the fires skipped."""

    last_fired: datetime | None = None
    skipped: int = 0

    def encode(self) -> bytes:
        document: dict[str, Any] = {"skipped": self.skipped}
        if self.last_fired is not None:
            document["last_fired"] = iso(self.last_fired)
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Progress:
        """Reads a progress value; an older scheduler stored the bare ISO instant."""
        if not data:
            return cls()
        text = data.decode()
        if not text.startswith("{"):
            return cls(last_fired=datetime.fromisoformat(text))
        document = json.loads(text)
        last = document.get("last_fired")
        return cls(datetime.fromisoformat(last) if last else None, int(document.get("skipped", 0)))

    @classmethod
    def from_entry(cls, entry: ProgressEntry) -> Progress:
        last_us, skipped = entry
        return cls(None if last_us is None else from_micros(last_us), skipped)


async def read_progress(kv: KeyValue, key: str) -> Progress:
    """One trigger's progress (`key` is `<workspace>.<trigger>`), from its shard document, else from the key an
    older scheduler wrote; an empty Progress when the trigger never fired nor skipped."""
    try:
        document = (await kv.get(progress_key(shard_of(key)))).value
    except nats.js.errors.KeyNotFoundError:
        document = None
    entry = decode_shard_progress(document).get(key)
    if entry is not None:
        return Progress.from_entry(entry)
    try:
        return Progress.decode((await kv.get(key)).value)
    except nats.js.errors.KeyNotFoundError:
        return Progress()


@dataclass
class Seen:
    """The latest revision of a lease or heartbeat key, and when this replica saw it change (monotonic)."""

    revision: int
    value: dict[str, Any] | None
    seen_at: float


EntryCallback = Callable[[str, bytes | None, int], None]
_V1_ACK_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>


def _revision_and_pending(message: Msg) -> tuple[int, int]:
    """The stream sequence and pending count of a delivered message, read straight from the common (v1) ack
    subject; nats-py's full `metadata` (with a datetime) for any other form. Loading 100,000 keys feels it."""
    tokens = message.reply.split(".")
    if len(tokens) == _V1_ACK_TOKENS:
        return int(tokens[5]), int(tokens[8])
    metadata = message.metadata
    return metadata.sequence.stream, metadata.num_pending


async def follow_bucket(js: JetStreamContext, bucket: str, on_entry: EntryCallback, loaded: asyncio.Event):
    """Calls `on_entry(key, value or None when deleted, revision)` for every current key of KV `bucket`, sets
    `loaded` once they are all applied, then keeps following. Returns the subscription (unsubscribe to stop).

    An ordered consumer with a callback rather than `KeyValue.watchall`: no queue between NATS and the
    callback, which roughly halves the time to load 100,000 keys.
    """
    prefix = f"$KV.{bucket}."

    async def deliver(message: Msg) -> None:
        operation = message.headers.get(KV_OP) if message.headers else None
        deleted = operation in (KV_DEL, KV_PURGE) or not message.data
        key = message.subject[len(prefix) :]
        revision, pending = _revision_and_pending(message)
        try:
            on_entry(key, None if deleted else message.data, revision)
        except Exception:
            log.exception("cannot apply a KV entry", bucket=bucket, key=key)
        if pending == 0:
            loaded.set()

    subscription = await js.subscribe(
        f"{prefix}>",
        stream=f"KV_{bucket}",
        cb=deliver,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=300.0,
    )
    info = await subscription.consumer_info()
    if info.num_pending == 0 and subscription.delivered == 0:
        loaded.set()
    return subscription


class SchedulerState:
    """A live view of the `kairos_scheduler` bucket: progress per shard, leases and heartbeats."""

    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self._js = js
        self.kv = kv
        self._shard_progress: dict[int, bytes] = {}  # raw documents, decoded when a shard is acquired
        self._legacy_progress: dict[str, bytes] = {}
        self.leases: dict[int, Seen] = {}
        self.replicas: dict[str, Seen] = {}
        self.loaded = asyncio.Event()
        self._subscription = None

    async def start(self) -> None:
        self._subscription = await follow_bucket(self._js, SCHEDULER_BUCKET, self._apply, self.loaded)
        await self.loaded.wait()

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    def shard_progress(self, shard: int, keys: set[str]) -> dict[str, ProgressEntry]:
        """The progress of a shard's triggers: its document, plus what older schedulers saved for `keys`."""
        triggers = decode_shard_progress(self._shard_progress.get(shard))
        for key in keys:
            legacy = self._legacy_progress.get(key)
            if legacy is not None and key not in triggers:
                progress = Progress.decode(legacy)
                last = None if progress.last_fired is None else to_micros(progress.last_fired)
                triggers[key] = [last, progress.skipped]
        return triggers

    def _apply(self, key: str, value: bytes | None, revision: int) -> None:
        if key.startswith(PROGRESS_PREFIX):
            shard = int(key[len(PROGRESS_PREFIX) :])
            if value is None:
                self._shard_progress.pop(shard, None)
            else:
                self._shard_progress[shard] = value
        elif key.startswith(LEASE_PREFIX):
            shard = int(key[len(LEASE_PREFIX) :])
            self.leases[shard] = Seen(revision, json.loads(value) if value else None, time.monotonic())
        elif key.startswith(REPLICA_PREFIX):
            replica = key[len(REPLICA_PREFIX) :]
            if value is None:
                self.replicas.pop(replica, None)
            else:
                self.replicas[replica] = Seen(revision, json.loads(value), time.monotonic())
        elif value is None:
            self._legacy_progress.pop(key, None)
        else:
            self._legacy_progress[key] = value

    def live_replicas(self, ttl: float) -> dict[str, dict[str, Any]]:
        """Heartbeats that changed within `ttl` seconds, by replica id."""
        now = time.monotonic()
        return {
            replica: seen.value
            for replica, seen in self.replicas.items()
            if seen.value is not None and now - seen.seen_at <= ttl
        }
