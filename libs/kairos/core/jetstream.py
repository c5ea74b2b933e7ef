"""A lean JetStream publisher: many publishes in flight over one reply subscription.

nats-py's `js.publish` waits for each ack on a fresh inbox, and its `publish_async` pays for a task, a random
token and a dataclass parse per message. Here every publish's reply subject is `<inbox>.<counter>` under one
wildcard subscription, the PubAck is parsed with orjson, at most `max_in_flight` publishes wait for their
ack (further publishes wait for a free slot), each attempt has a deadline, and a publish not acknowledged in
time is sent again with the same `Nats-Msg-Id`, which JetStream's de-duplication makes safe.

    publisher = JetStreamPublisher(nc)
    await publisher.start()
    ack = await publisher.publish("kairos.fire.ws.t1", payload, msg_id="t1@2026-01-01T00:00:00Z")
    pending = await publisher.submit(subject, payload, msg_id=...)  # returns once sent; await `pending` later
    await publisher.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kairos.core.tasks import spawn

MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_ATTEMPTS = 3
DEFAULT_MAX_IN_FLIGHT = 4096
_STATUS_HEADER = "Status"
_NO_RESPONDERS = "503"


@dataclass(frozen=True, slots=True)
class PubAck:
    """JetStream stored the message: in `stream` at sequence `seq`; `duplicate` when the Msg-Id was seen."""

    stream: str
    seq: int
    duplicate: bool = False


class JetStreamPublishError(Exception):
    """JetStream did not store a publish; `code`/`err_code` are the JetStream API error's, when it sent one."""

    def __init__(self, subject: str, description: str, code: int = 0, err_code: int = 0) -> None:
        super().__init__(f"publish to {subject!r} failed: {description}")
        self.subject = subject
        self.description = description
        self.code = code
        self.err_code = err_code


class NoStreamError(JetStreamPublishError):
    """Nothing listens on the subject: no stream captures it."""


class PublishTimeoutError(JetStreamPublishError, TimeoutError):
    """No ack arrived within the deadline of any attempt."""


class PublisherClosedError(JetStreamPublishError):
    """The publisher was closed before the ack arrived."""


class _Pending:
    """One publish waiting for its ack (or, when `raw`, one request waiting for its reply message)."""

    __slots__ = ("attempts_left", "future", "headers", "payload", "raw", "subject", "timeout", "timer")

    def __init__(
        self, subject: str, payload: bytes, headers, timeout: float, attempts: int, future, raw: bool = False
    ) -> None:
        self.raw = raw
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.timeout = timeout
        self.attempts_left = attempts
        self.future: asyncio.Future[PubAck] = future
        self.timer: asyncio.TimerHandle | None = None


class JetStreamPublisher:
    """Publishes to JetStream with a bounded window of unacknowledged publishes on one NATS connection."""

    def __init__(
        self,
        nc: Client,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        if max_in_flight < 1 or timeout <= 0 or attempts < 1:
            raise ValueError("max_in_flight and attempts must be at least 1 and timeout positive")
        self._nc = nc
        self._timeout = timeout
        self._attempts = attempts
        self._window = asyncio.Semaphore(max_in_flight)
        self._pending: dict[str, _Pending] = {}
        self._counter = itertools.count()
        self._prefix = ""
        self._subscription: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retries: set[asyncio.Task] = set()

    @property
    def in_flight(self) -> int:
        """Publishes sent and not yet acknowledged (nor failed)."""
        return len(self._pending)

    async def start(self) -> None:
        """Subscribes to the reply inbox; call once before publishing."""
        self._loop = asyncio.get_running_loop()
        self._prefix = f"{self._nc.new_inbox()}."
        # Unbounded: the window already bounds how many acks can be pending.
        self._subscription = await self._nc.subscribe(
            f"{self._prefix}*", cb=self._on_reply, pending_msgs_limit=0, pending_bytes_limit=0
        )

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
        stream: str | None = None,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> PubAck:
        """Publishes and waits for JetStream's ack; raises a `JetStreamPublishError` when it does not come."""
        pending = await self.submit(
            subject, payload, headers=headers, msg_id=msg_id, stream=stream, timeout=timeout, attempts=attempts
        )
        return await pending

    async def submit(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
        stream: str | None = None,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> asyncio.Future[PubAck]:
        """Sends a publish and returns the future of its ack without waiting for it.

        Waits only while `max_in_flight` publishes are unacknowledged. Each attempt waits `timeout` seconds (the
        publisher's default when None); after `attempts` attempts the future fails with `PublishTimeoutError`.
        `msg_id` sets `Nats-Msg-Id` (without one a retry may store the message twice); `stream` sets
        `Nats-Expected-Stream`, so a subject captured by another stream is refused.
        """
        if msg_id is not None or stream is not None:
            headers = dict(headers or {})
            if msg_id is not None:
                headers[MSG_ID_HEADER] = msg_id
            if stream is not None:
                headers[EXPECTED_STREAM_HEADER] = stream
        return await self._submit(subject, payload, headers, timeout, attempts, raw=False)

    async def request(
        self, subject: str, payload: bytes = b"", *, timeout: float | None = None, attempts: int | None = None
    ) -> Msg:
        """A JetStream API request (a KV direct get, say) over the same reply inbox, retried like a publish;
        returns the reply message as it came (a `Status` header tells a 404)."""
        return await (await self._submit(subject, payload, None, timeout, attempts, raw=True))

    async def _submit(self, subject, payload, headers, timeout, attempts, *, raw: bool) -> asyncio.Future:
        if self._subscription is None:
            raise RuntimeError("JetStreamPublisher.start() was not called")
        await self._window.acquire()
        future: asyncio.Future = self._loop.create_future()
        reply = f"{self._prefix}{next(self._counter)}"
        entry = _Pending(subject, payload, headers, timeout or self._timeout, attempts or self._attempts, future, raw)
        self._pending[reply] = entry
        future.add_done_callback(self._release)
        await self._send(reply, entry)
        return future

    async def close(self) -> None:
        """Stops listening for acks; publishes still waiting fail with `PublisherClosedError`."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            # The connection may already be closed; there is nothing left to undo then.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._finish(entry, error=PublisherClosedError(entry.subject, "the publisher was closed"))

    # ------------------------------------------------------------------------------------ internals

    async def _send(self, reply: str, entry: _Pending) -> None:
        entry.attempts_left -= 1
        entry.timer = self._loop.call_later(entry.timeout, self._expired, reply)
        try:
            await self._nc.publish(entry.subject, entry.payload, reply=reply, headers=entry.headers)
        except Exception as error:
            if self._pending.pop(reply, None) is entry:
                self._finish(entry, error=JetStreamPublishError(entry.subject, f"cannot send: {error!r}"))

    def _expired(self, reply: str) -> None:
        entry = self._pending.get(reply)
        if entry is None:
            return
        if entry.future.done():  # cancelled by its caller: stop retrying
            del self._pending[reply]
            return
        if entry.attempts_left > 0:
            retry = spawn(self._send(reply, entry), "jetstream-publish-retry")
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)
            return
        del self._pending[reply]
        self._finish(entry, error=PublishTimeoutError(entry.subject, f"no ack within {entry.timeout:g} s"))

    async def _on_reply(self, message: Msg) -> None:
        entry = self._pending.pop(message.subject, None)
        if entry is None:
            return  # a late ack of an attempt already answered, or of a publish that failed
        headers = message.headers
        if headers and headers.get(_STATUS_HEADER) == _NO_RESPONDERS:
            self._finish(entry, error=NoStreamError(entry.subject, "no stream captures this subject"))
            return
        if entry.raw:
            self._finish(entry, ack=message)
            return
        try:
            document = orjson.loads(message.data)
            error = document.get("error")
            if error is None:
                self._finish(entry, ack=PubAck(document["stream"], document["seq"], document.get("duplicate", False)))
                return
            failure = JetStreamPublishError(
                entry.subject, error.get("description", "error"), error.get("code", 0), error.get("err_code", 0)
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as problem:
            failure = JetStreamPublishError(entry.subject, f"unreadable ack {message.data[:200]!r}: {problem!r}")
        self._finish(entry, error=failure)

    @staticmethod
    def _finish(entry: _Pending, *, ack: PubAck | Msg | None = None, error: Exception | None = None) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.future.done():
            return
        if error is None:
            entry.future.set_result(ack)
        else:
            entry.future.set_exception(error)

    def _release(self, _future: asyncio.Future) -> None:
        self._window.release()
