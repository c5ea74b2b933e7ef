"""Standard Webhooks signing, and durable delivery of lifecycle events to a trigger's notify_url.

The worker puts each event of a trigger that has a notify_url on the KAIROS_CALLBACKS work-queue stream
(`Nats-Msg-Id` = the event id, so a repeat within the duplicate window is dropped) before it acknowledges the
fire, and never waits for the POST itself. A durable consumer shared by the executors delivers them as
signed JSON (10 s timeout); within a process, one URL's callbacks go one at a time in stream order, and a
callback waiting for its turn or for its POST gets in-progress acks. A 2xx acks; a 410 acks and stops every
later callback of that trigger to that URL (recorded in `callback_stops`, so the stop survives restarts); any
other 4xx is dropped with a warning; 5xx, 408, 429, timeouts and network errors are nak'ed with an exponential
backoff as delay until MAX_DELIVERIES, then dropped with a warning. A callback in flight when its executor
dies is redelivered after ack_wait to an executor that is alive. Delivery is at least once: receivers
deduplicate on `webhook-id` (the event id).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import nats.errors
import structlog
from google.protobuf import json_format
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from kairos.core import messaging
from kairos.core.feed import KvMirror
from kairos.core.jetstream import JetStreamPublisher
from kairos.core.sealing import Sealer, SealingError
from kairos.core.tasks import spawn
from kairos.executor.models import CallbackStopRow
from kairos.executor.runs import insert_new, parsed_trigger
from kairos.v1 import feed_pb2, run_pb2

log = structlog.get_logger(__name__)
T = TypeVar("T")

CALLBACKS_STREAM = "KAIROS_CALLBACKS"
CALLBACK_SUBJECT_PREFIX = "kairos.callbacks"
NOTIFY_URL_HEADER = "Kairos-Notify-Url"
DURABLE = "kairos-executor-callbacks"
MAX_DELIVERIES = 6
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 60.0
TIMEOUT_S = 10.0
CONCURRENCY = 32
MAX_AGE_S = 7 * 24 * 3600.0
RETRIED_STATUSES = {408, 429}


class Signer:
    """Adds `webhook-id`, `webhook-timestamp` and `webhook-signature` headers to a request Kairos sends for a
    workspace: one signature per current signing key of the workspace (RotateSigningSecret; fed sealed through
    `kairos_workspaces` and opened once per key), else, for a workspace that never made one, with
    KAIROS_NOTIFY_SIGNING_SECRET, the deployment's `whsec_<base64>` secret; with neither, requests go unsigned."""

    def __init__(
        self,
        secret: str,
        workspaces: KvMirror[feed_pb2.WorkspaceRecord] | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self._deployment = Webhook(secret) if secret else None
        self._workspaces = workspaces
        self._sealer = sealer
        self._opened: dict[str, tuple[bytes, Webhook]] = {}  # signing key id -> (its sealed form, its signer)

    def headers(self, workspace: str, message_id: str, body: str) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        now = datetime.now(UTC)
        keys = self._keys_of(workspace, now.timestamp())
        if keys is None:
            keys = [self._deployment] if self._deployment is not None else []
        if not keys:
            return headers
        headers["webhook-id"] = message_id
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        headers["webhook-signature"] = " ".join(key.sign(message_id, now, body) for key in keys)
        return headers

    def _keys_of(self, workspace: str, now_s: float) -> list[Webhook] | None:
        """The workspace's unexpired keys that open, oldest first; None when it has none of its own."""
        record = self._workspaces.cached(workspace) if self._workspaces is not None else None
        if record is None or not record.signing_keys:
            return None
        keys = []
        for key in record.signing_keys:
            if key.HasField("expire_time") and key.expire_time.seconds <= now_s:
                continue
            opened = self._opened.get(key.id)
            if opened is None or opened[0] != key.sealed_key:
                try:
                    if self._sealer is None:
                        raise SealingError("KAIROS_SECRET_KEY is not set")
                    plain = self._sealer.open(key.sealed_key, f"workspaces/{workspace}")
                except SealingError as error:
                    log.warning("workspace signing key does not open; unsigned", workspace=workspace, error=str(error))
                    continue
                opened = self._opened[key.id] = (key.sealed_key, Webhook(base64.b64encode(plain).decode()))
            keys.append(opened[1])
        return keys


def backoff_s(delivery: int) -> float:
    """Delay before delivery `delivery + 1` of a callback that failed on delivery `delivery` (1-based)."""
    return min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** (delivery - 1))


def stream_config(replicas: int = 1) -> api.StreamConfig:
    """A work queue: a callback is gone from the stream once a consumer acked (or terminated) it."""
    return messaging.stream_config(
        CALLBACKS_STREAM,
        f"{CALLBACK_SUBJECT_PREFIX}.>",
        "Kairos lifecycle events waiting to be POSTed to their trigger's notify_url",
        replicas=replicas,
        max_age_s=MAX_AGE_S,
        retention=api.RetentionPolicy.WORK_QUEUE,
    )


def event_json(event: run_pb2.TraceEvent) -> str:
    return json.dumps(json_format.MessageToDict(event, preserving_proto_field_name=True))


class Callbacks:
    """Queues lifecycle events for notify_urls on JetStream and delivers them from a durable consumer."""

    def __init__(
        self,
        js: JetStreamContext,
        publisher: JetStreamPublisher,
        http: httpx.AsyncClient,
        signer: Signer,
        sessions: async_sessionmaker[AsyncSession],
        ack_wait_s: float,
        replicas: int = 1,
    ) -> None:
        """`replicas`: of KAIROS_CALLBACKS, as of every other Kairos stream (KAIROS_NATS_REPLICAS)."""
        self._js = js
        self._replicas = replicas
        self._publisher = publisher
        self._http = http
        self._signer = signer
        self._sessions = sessions
        self._ack_wait_s = ack_wait_s
        self._stopped: set[tuple[str, str, str]] = set()
        self._url_locks: dict[str, asyncio.Lock] = {}
        self._url_users: dict[str, int] = {}
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task] = set()
        self._subscription = None
        self._loop: asyncio.Task | None = None

    async def start(self) -> None:
        await messaging.ensure_stream(self._js, stream_config(self._replicas))
        await self._js.add_consumer(
            CALLBACKS_STREAM,
            api.ConsumerConfig(
                durable_name=DURABLE,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self._ack_wait_s,
                max_deliver=MAX_DELIVERIES + 2,  # a bound for callbacks whose executor keeps dying mid-POST
                max_ack_pending=10_000,
            ),
        )
        async with self._sessions() as session:
            stops = (await session.execute(select(CallbackStopRow))).scalars().all()
        self._stopped = {(stop.workspace_id, stop.trigger_id, stop.url) for stop in stops}
        self._subscription = await self._js.pull_subscribe_bind(durable=DURABLE, stream=CALLBACKS_STREAM)
        self._loop = spawn(self._pull(self._subscription), "executor-callbacks")

    async def stop(self) -> None:
        """Stops pulling and abandons callbacks in flight: they are redelivered after ack_wait."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def enqueue(self, url: str, events: Sequence[run_pb2.TraceEvent]) -> None:
        """Stores the callbacks of `events` to `url` durably: sends them all, then returns once JetStream has
        acknowledged every one; raises the first failure (a `JetStreamPublishError`)."""
        acks = []
        try:
            for event in events:
                trigger = parsed_trigger(event.trigger)
                acks.append(
                    await self._publisher.submit(
                        f"{CALLBACK_SUBJECT_PREFIX}.{trigger.workspace}.{trigger.trigger}",
                        event.SerializeToString(),
                        headers={NOTIFY_URL_HEADER: url},
                        msg_id=event.id,
                        stream=CALLBACKS_STREAM,
                    )
                )
        except BaseException:
            for ack in acks:
                ack.cancel()
            raise
        for outcome in await asyncio.gather(*acks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _pull(self, subscription) -> None:
        while True:
            try:
                messages = await subscription.fetch(batch=CONCURRENCY, timeout=1.0)
            except TimeoutError:
                continue
            except nats.errors.Error as error:
                log.warning("fetching callbacks failed; backing off", error=str(error))
                await asyncio.sleep(0.5)
                continue
            for message in messages:
                await self._slots.acquire()
                task = spawn(self._deliver(message), "executor-callback")
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _deliver(self, message: Msg) -> None:
        url = (message.headers or {}).get(NOTIFY_URL_HEADER, "")
        try:
            event = run_pb2.TraceEvent.FromString(message.data)
            trigger = parsed_trigger(event.trigger)
        except Exception:
            log.error("discarding a callback that is not a valid TraceEvent", subject=message.subject)
            await message.term()
            return
        stop_key = (trigger.workspace, trigger.trigger, url)
        # Tasks take the URL's lock in the order they were fetched (asyncio locks are fair): stream order.
        lock = self._url_locks.setdefault(url, asyncio.Lock())
        self._url_users[url] = self._url_users.get(url, 0) + 1
        try:
            await self._in_progress_while(message, lock.acquire())
            try:
                if stop_key in self._stopped or not url:
                    await message.ack()
                    return
                await self._post(message, url, event, stop_key)
            finally:
                lock.release()
        finally:
            self._url_users[url] -= 1
            if self._url_users[url] == 0:
                del self._url_users[url], self._url_locks[url]

    async def _post(self, message: Msg, url: str, event: run_pb2.TraceEvent, stop_key: tuple[str, str, str]) -> None:
        body = event_json(event)
        try:
            status = await self._in_progress_while(message, self._status_of_post(url, body, event))
        except httpx.HTTPError as error:
            status, detail = 0, str(error) or type(error).__name__
        else:
            detail = ""
        if 200 <= status < 300:
            await message.ack()
            return
        if status == 410:
            await self._record_stop(stop_key)
            log.info("notify_url answered 410 Gone; no more callbacks of this trigger to it", url=url)
            await message.ack()
            return
        if status and status < 500 and status not in RETRIED_STATUSES:
            log.warning("notify_url refused a callback; dropping it", url=url, status=status, event=event.id)
            await message.ack()
            return
        delivery = message.metadata.num_delivered
        if delivery >= MAX_DELIVERIES:
            log.warning("callback given up", url=url, event=event.id, status=status, error=detail, tries=delivery)
            await message.term()
            return
        await message.nak(delay=backoff_s(delivery))

    async def _status_of_post(self, url: str, body: str, event: run_pb2.TraceEvent) -> int:
        """POSTs one callback and returns the answer's status. The answer's body is never read: a callback needs
        none, and the receiver (whose URL is the workspace's to choose) could make it as large as it likes."""
        headers = self._signer.headers(parsed_trigger(event.trigger).workspace, event.id, body)
        async with self._http.stream("POST", url, content=body, headers=headers, timeout=TIMEOUT_S) as response:
            return response.status_code

    async def _in_progress_while(self, message: Msg, awaitable: Awaitable[T]) -> T:
        """Awaits `awaitable`, acking `message` in progress every ack_wait / 3 meanwhile, so only a dead
        executor lets the callback be redelivered."""
        task = asyncio.ensure_future(awaitable)
        try:
            while not (await asyncio.wait({task}, timeout=self._ack_wait_s / 3))[0]:
                with contextlib.suppress(Exception):
                    await message.in_progress()
            return task.result()
        finally:
            task.cancel()

    async def _record_stop(self, stop_key: tuple[str, str, str]) -> None:
        self._stopped.add(stop_key)
        workspace, trigger, url = stop_key
        row = {"workspace_id": workspace, "trigger_id": trigger, "url": url, "stopped_at": datetime.now(UTC)}
        async with self._sessions() as session, session.begin():
            await session.run_sync(insert_new, CallbackStopRow, [row], ["workspace_id", "trigger_id", "url"])
