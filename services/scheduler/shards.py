"""Shard leases: how any number of scheduler replicas share the triggers.

Triggers fall into `NUM_SHARDS` shards by a stable hash of their key. A replica fires only the triggers of
the shards it holds a lease on. A lease is the KV key `_lease.<shard>` in `kairos_scheduler`, written only
with a revision check (`create`, `update(last=revision)`), so two replicas never both win it. Every second
each replica renews its leases and writes its heartbeat (`_replica.<id>`).

A lease is free when nobody holds it (released, or never taken) or when its revision has not changed for
`LEASE_TTL_S` as this replica observed it (a monotonic clock, so clocks of different machines never matter):
its holder is dead. Each replica aims at ceil(shards / live replicas) leases, releasing its extras and
taking free ones, so N live replicas split the shards evenly and a dead replica's shards move within
`LEASE_TTL_S` plus one renewal. A replica that cannot renew a lease for `LEASE_TTL_S - RENEW_EVERY_S` stops
firing its triggers before anyone else can take it over.

The lease value says who held it, when it was last renewed and, once released, why. A shard taken over from
a running scheduler (expired holder, or released to rebalance) fires every fire it fell due since the
previous holder's last renewal minus `LATE_MARGIN` (late, not missed). A shard released because the whole
scheduler stopped (the last replica shut down) is planned by the catch-up policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.js.errors
import structlog

from kairos.core.tasks import cancel_and_wait, spawn, wait_event
from kairos.scheduler.engine import NUM_SHARDS, SchedulerEngine
from kairos.scheduler.state import LEASE_PREFIX, REPLICA_PREFIX, SchedulerState, iso

log = structlog.get_logger(__name__)

LEASE_TTL_S = 5.0
RENEW_EVERY_S = 1.0
LATE_MARGIN = timedelta(seconds=30)
HANDOVER_WINDOW = timedelta(minutes=2)


def lease_key(shard: int) -> str:
    return f"{LEASE_PREFIX}{shard:03d}"


class ShardLeases:
    """Holds, renews, balances and releases this replica's shard leases; heartbeats with its status."""

    def __init__(
        self,
        state: SchedulerState,
        engine: SchedulerEngine,
        status: Callable[[], dict[str, Any]],
        *,
        ttl: float = LEASE_TTL_S,
        renew_every: float = RENEW_EVERY_S,
    ) -> None:
        self._state = state
        self._kv = state.kv
        self._engine = engine
        self._status = status
        self.replica_id = engine.replica_id
        self._ttl = ttl
        self._renew_every = renew_every
        self._held: dict[int, int] = {}
        self._renewed: dict[int, float] = {}
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()  # the loop also ends on this: nats-py can swallow a cancellation
        self.balanced = asyncio.Event()

    @property
    def shards(self) -> list[int]:
        return sorted(self._held)

    async def start(self) -> None:
        await self._heartbeat()
        self._task = spawn(self._run(), "scheduler-leases")

    async def stop(self) -> None:
        self._stopping.set()
        await cancel_and_wait(self._task)
        others = set(self._state.live_replicas(self._ttl)) - {self.replica_id}
        reason = "rebalance" if others else "stop"
        log.info("releasing shard leases", shards=len(self._held), reason=reason)
        released = dict(self._held)
        for shard in released:
            self._drop(shard)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._ttl):
                for shard, revision in released.items():
                    with contextlib.suppress(Exception):
                        value = self._value(owner="", released_by=self.replica_id, reason=reason)
                        await self._kv.update(lease_key(shard), value, last=revision)
                with contextlib.suppress(Exception):
                    await self._kv.delete(f"{REPLICA_PREFIX}{self.replica_id}")
        log.info("shard leases released")

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("lease round failed")
            await wait_event(self._stopping, self._renew_every)

    async def tick(self) -> None:
        """One round: heartbeat, renew, then release extras or take free shards towards the fair share."""
        await self._renew()
        await self._heartbeat()
        live = set(self._state.live_replicas(self._ttl)) | {self.replica_id}
        target = math.ceil(NUM_SHARDS / len(live))
        extra = len(self._held) - target
        if extra > 0:
            for shard in random.sample(sorted(self._held), extra):
                await self._release(shard, "rebalance")
        elif extra < 0:
            await self._acquire(-extra)
        if extra:
            await self._heartbeat()  # the shards changed: say so now rather than at the next round
        if len(self._held) == target:
            self.balanced.set()
        else:
            self.balanced.clear()

    def _value(self, **fields: Any) -> bytes:
        document = {"owner": self.replica_id, "renewed_at": iso(datetime.now(UTC)), **fields}
        return json.dumps(document, separators=(",", ":")).encode()

    async def _heartbeat(self) -> None:
        status = {"id": self.replica_id, "shards": self.shards, "time": iso(datetime.now(UTC)), **self._status()}
        await self._kv.put(f"{REPLICA_PREFIX}{self.replica_id}", json.dumps(status, separators=(",", ":")).encode())

    async def _renew(self) -> None:
        for shard, revision in list(self._held.items()):
            try:
                self._held[shard] = await self._kv.update(lease_key(shard), self._value(), last=revision)
                self._renewed[shard] = time.monotonic()
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("lease lost to another replica", shard=shard)
                self._drop(shard)
            except Exception as error:
                if time.monotonic() - self._renewed[shard] > self._ttl - self._renew_every:
                    log.warning("lease not renewed in time; no longer firing its triggers", shard=shard)
                    self._drop(shard)
                else:
                    log.warning("cannot renew lease; retrying", shard=shard, error=str(error))

    def _drop(self, shard: int) -> None:
        self._held.pop(shard, None)
        self._renewed.pop(shard, None)
        self._engine.release(shard)

    async def _release(self, shard: int, reason: str) -> None:
        revision = self._held[shard]
        self._drop(shard)
        value = self._value(owner="", released_by=self.replica_id, reason=reason)
        with contextlib.suppress(Exception):
            await self._kv.update(lease_key(shard), value, last=revision)

    def _free(self, shard: int, now: float) -> bool:
        seen = self._state.leases.get(shard)
        if seen is None or seen.value is None or not seen.value.get("owner"):
            return True
        # A lease naming this replica that it does not hold is left from before a restart with the same id.
        return seen.value["owner"] == self.replica_id or now - seen.seen_at > self._ttl

    async def _acquire(self, wanted: int) -> None:
        now = time.monotonic()
        free = [shard for shard in range(NUM_SHARDS) if shard not in self._held and self._free(shard, now)]
        random.shuffle(free)
        for shard in free:
            if wanted <= 0:
                return
            seen = self._state.leases.get(shard)
            try:
                if seen is None:
                    revision = await self._kv.create(lease_key(shard), self._value())
                else:
                    revision = await self._kv.update(lease_key(shard), self._value(), last=seen.revision)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
                continue  # another replica took it first
            self._held[shard] = revision
            self._renewed[shard] = time.monotonic()
            self._engine.acquire(shard, late_since=_late_since(seen.value if seen else None))
            wanted -= 1


def _late_since(previous: dict[str, Any] | None) -> datetime | None:
    """Fires after this instant are late, not missed, when a shard moves from a running scheduler."""
    if not previous or previous.get("reason") == "stop" or "renewed_at" not in previous:
        return None
    renewed_at = datetime.fromisoformat(previous["renewed_at"])
    if datetime.now(UTC) - renewed_at > HANDOVER_WINDOW:
        return None
    return renewed_at - LATE_MARGIN
