"""A lean JetStream publisher: many publishes in flight over one reply subscription.

nats-py's `js.publish` waits for each ack on a fresh inbox, and its `publish_async` pays for a task, a random
token, a per-header regex and a dataclass parse per message. Here every publish's reply subject is
`<inbox>.<counter>` under one wildcard subscription, the whole HPUB command is built once per publish (headers
checked once), the PubAck is parsed with orjson, at most `max_in_flight` publishes wait for their
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
import functools
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol.command import hpub_cmd, pub_cmd

from kairos.core.messaging import MSG_ID_HEADER
from kairos.core.tasks import spawn

EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"
# With "0", JetStream stores the message only while its subject holds none (else SubjectNotEmptyError).
EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER = "Nats-Expected-Last-Subject-Sequence"
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_ATTEMPTS = 3
DEFAULT_MAX_IN_FLIGHT = 4096
_STATUS_HEADER = "Status"
_ERR_WRONG_LAST_SEQUENCE = 10071
_NO_RESPONDERS = "503"
_HEADER_LINE = b"NATS/1.0\r\n"
_HEADER_KEY_FORBIDDEN = frozenset(":\r\n \t")
_WHITESPACE = re.compile(r"\s")


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


class SubjectNotEmptyError(JetStreamPublishError):
    """The publish expected a last subject sequence (0: an empty subject) that the stream no longer has."""


class PublishTimeoutError(JetStreamPublishError, TimeoutError):
    """No ack arrived within the deadline of any attempt."""


class PublisherClosedError(JetStreamPublishError):
    """The publisher was closed before the ack arrived."""


class PayloadTooLargeError(JetStreamPublishError):
    """The message is larger than the server's max payload: permanent, a retry fails the same way."""


class _Pending:
    """One publish waiting for its ack: the whole protocol command, sent again as is on a retry."""

    __slots__ = ("attempts_left", "command", "future", "subject", "timeout", "timer")

    def __init__(self, subject: str, command: bytes, timeout: float, attempts: int, future) -> None:
        self.subject = subject
        self.command = command
        self.timeout = timeout
        self.attempts_left = attempts
        self.future: asyncio.Future[PubAck] = future
        self.timer: asyncio.TimerHandle | None = None


@functools.lru_cache(maxsize=256)
def _checked_header_name(key: str) -> str:
    if not key or not key.isascii() or _HEADER_KEY_FORBIDDEN.intersection(key):
        raise ValueError(f"invalid NATS header name {key!r}")
    return key


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The NATS header block for `headers`; a key or value that would break the protocol is a ValueError."""
    lines = []
    for key, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"NATS header {key!r} has a line break in its value")
        lines.append(f"{_checked_header_name(key)}: {value}\r\n")
    return _HEADER_LINE + "".join(lines).encode() + b"\r\n"


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
        self._max_in_flight = max_in_flight
        # A full window reopens only once a quarter of it is acknowledged: fewer wake-ups than one per ack.
        self._reopen_at = max_in_flight - max(1, max_in_flight // 4)
        self._room: asyncio.Future[None] | None = None
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
        if self._subscription is None:
            raise RuntimeError("JetStreamPublisher.start() was not called")
        if not subject or _WHITESPACE.search(subject):
            raise ValueError(f"invalid NATS subject {subject!r}")
        if len(payload) > self._nc.max_payload:
            raise PayloadTooLargeError(subject, f"payload of {len(payload)} bytes exceeds {self._nc.max_payload}")
        if msg_id is not None or stream is not None:
            headers = dict(headers or {})
            if msg_id is not None:
                headers[MSG_ID_HEADER] = msg_id
            if stream is not None:
                headers[EXPECTED_STREAM_HEADER] = stream
        header_block = encode_headers(headers) if headers else None
        while len(self._pending) >= self._max_in_flight:
            if self._room is None or self._room.done():
                self._room = self._loop.create_future()
            await self._room
            if self._subscription is None:
                raise PublisherClosedError(subject, "the publisher was closed")
        future: asyncio.Future = self._loop.create_future()
        reply = f"{self._prefix}{next(self._counter)}"
        if header_block is None:
            command = pub_cmd(subject, reply, payload)
        else:
            command = hpub_cmd(subject, reply, header_block, payload)
        entry = _Pending(subject, command, timeout or self._timeout, attempts or self._attempts, future)
        self._pending[reply] = entry
        await self._send(reply, entry)
        return future

    async def close(self) -> None:
        """Stops listening for acks; publishes still waiting fail with `PublisherClosedError`."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            # The connection may already be closed; there is nothing left to undo then.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        for retry in list(self._retries):
            retry.cancel()
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._finish(entry, error=PublisherClosedError(entry.subject, "the publisher was closed"))
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    # ------------------------------------------------------------------------------------ internals

    async def _send(self, reply: str, entry: _Pending) -> None:
        """Sends (or sends again) one publish the way `nc.publish` does once its command is built."""
        entry.attempts_left -= 1
        entry.timer = self._loop.call_later(entry.timeout, self._expired, reply)
        nc = self._nc
        try:
            if nc.is_closed:
                raise nats.errors.ConnectionClosedError
            await nc._send_command(entry.command)
            if nc._flush_queue is not None and nc._flush_queue.empty():
                await nc._flush_pending()
        except Exception as error:
            if self._pending.pop(reply, None) is entry:
                self._finish(entry, error=JetStreamPublishError(entry.subject, f"cannot send: {error!r}"))

    def _expired(self, reply: str) -> None:
        entry = self._pending.get(reply)
        if entry is None:
            return
        if entry.future.done():  # cancelled by its caller: stop retrying
            del self._pending[reply]
            self._finish(entry)
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
        try:
            document = orjson.loads(message.data)
            error = document.get("error")
            if error is None:
                self._finish(entry, ack=PubAck(document["stream"], document["seq"], document.get("duplicate", False)))
                return
            err_code = error.get("err_code", 0)
            kind = SubjectNotEmptyError if err_code == _ERR_WRONG_LAST_SEQUENCE else JetStreamPublishError
            failure = kind(entry.subject, error.get("description", "error"), error.get("code", 0), err_code)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as problem:
            failure = JetStreamPublishError(entry.subject, f"unreadable ack {message.data[:200]!r}: {problem!r}")
        self._finish(entry, error=failure)

    def _finish(self, entry: _Pending, *, ack: PubAck | None = None, error: Exception | None = None) -> None:
        """Settles a publish already removed from `_pending`, and reopens a full window once it has room."""
        if entry.timer is not None:
            entry.timer.cancel()
        room = self._room
        if room is not None and len(self._pending) <= self._reopen_at and not room.done():
            room.set_result(None)
        if entry.future.done():
            return
        if error is None:
            entry.future.set_result(ack)
        else:
            entry.future.set_exception(error)
