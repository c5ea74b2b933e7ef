"""A lean JetStream publisher: many publishes in flight over one reply subscription.

nats-py's `js.publish` waits for each ack on a fresh inbox, and its `publish_async` pays for a task, a random
token, a per-header regex and a dataclass parse per message. Here every publish's reply subject is
`<inbox>.<counter>` under one wildcard subscription, the whole HPUB command is built once per publish (a constant
header set is encoded and checked once, as a `HeaderBlock`), the PubAck is parsed with orjson, at most
`max_in_flight` publishes wait for their ack, each attempt has a deadline, and a publish not acknowledged in
time is sent again with the same `Nats-Msg-Id`, which JetStream's de-duplication makes safe.

A publish costs one future and one small record: its command is queued synchronously (`submit_nowait`), one
timer armed for the oldest deadline keeps every publish's deadline (a per-call `timeout` gets a timer of its
own), and the publisher has a NATS connection of its own to the server `nc` is connected to
(`kairos.core.natswire.PublishConnection`), whose acks reach it without nats-py's parser, Msg objects,
subscription queue and task. Where that wire cannot connect the way `nc` did (TLS, NKeys, JWT), the publisher
sends on `nc` and reads acks through a nats-py subscription instead.

    publisher = JetStreamPublisher(nc)
    await publisher.start()
    ack = await publisher.publish("kairos.fire.ws.t1", payload, msg_id="t1@2026-01-01T00:00:00Z")
    pending = await publisher.submit(subject, payload, msg_id=...)  # returns once sent; await `pending` later
    pending = publisher.submit_nowait(subject, payload, headers=BLOCK)  # WindowFullError when the window is full
    await publisher.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import Awaitable, Mapping
from typing import NamedTuple

import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kairos.core.messaging import MSG_ID_HEADER
from kairos.core.natswire import PublishConnection, UnsupportedServerError, WireDisconnectedError
from kairos.core.tasks import spawn

log = structlog.get_logger(__name__)

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
# uvloop keeps time in milliseconds: its timers may fire up to a millisecond before the deadline they were set for.
_CLOCK_SLACK_S = 0.001


class PubAck(NamedTuple):
    """JetStream stored the message: in `stream` at sequence `seq`; `duplicate` when the Msg-Id was seen.
    (A NamedTuple: one is built per publish, at half the cost of a frozen dataclass.)"""

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


class WindowFullError(Exception):
    """`submit_nowait` found `max_in_flight` publishes unacknowledged and sent nothing; `submit` waits instead."""


class _Pending:
    """One publish waiting for its ack: the whole protocol command, sent again as is on a retry.

    `timer` is None for a publish on the publisher's default timeout (the sweep keeps its deadline)."""

    __slots__ = ("attempts_left", "command", "deadline", "future", "subject", "timeout", "timer")

    def __init__(self, subject: str, command: bytes, timeout: float, attempts: int, future) -> None:
        self.subject = subject
        self.command = command
        self.timeout = timeout
        self.attempts_left = attempts
        self.future: asyncio.Future[PubAck] = future
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None


@functools.lru_cache(maxsize=256)
def _checked_header_name(key: str) -> str:
    if not key or not key.isascii() or _HEADER_KEY_FORBIDDEN.intersection(key):
        raise ValueError(f"invalid NATS header name {key!r}")
    return key


def _header_line(key: str, value: str) -> bytes:
    if "\r" in value or "\n" in value:
        raise ValueError(f"NATS header {key!r} has a line break in its value")
    return f"{_checked_header_name(key)}: {value}\r\n".encode()


@functools.lru_cache(maxsize=64)
def _cached_header_line(key: str, value: str) -> bytes:
    """For values that repeat (stream names)."""
    return _header_line(key, value)


def _header_lines(headers: Mapping[str, str]) -> bytes:
    return b"".join(_header_line(key, value) for key, value in headers.items())


def _header_block(lines: bytes) -> bytes:
    return _HEADER_LINE + lines + b"\r\n"


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The NATS header block for `headers`; a key or value that would break the protocol is a ValueError."""
    return _header_block(_header_lines(headers))


class HeaderBlock:
    """A constant set of headers encoded and checked once (a ValueError here when one would break the protocol),
    to pass as `headers=` to every publish that carries it."""

    __slots__ = ("block", "lines", "names")

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.lines = _header_lines(headers)
        self.block = _header_block(self.lines)
        self.names = frozenset(headers)

    def __repr__(self) -> str:
        return f"HeaderBlock({self.lines!r})"


class JetStreamPublisher:
    """Publishes to JetStream with a bounded window of unacknowledged publishes on one NATS connection."""

    def __init__(
        self,
        nc: Client,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        own_connection: bool = True,
    ) -> None:
        """`own_connection=False` publishes on `nc` itself (what the publisher falls back to anyway when its own
        connection cannot be opened the way `nc`'s was)."""
        if max_in_flight < 1 or timeout <= 0 or attempts < 1:
            raise ValueError("max_in_flight and attempts must be at least 1 and timeout positive")
        self._nc = nc
        self._timeout = timeout
        self._attempts = attempts
        self._max_in_flight = max_in_flight
        # A full window reopens only once a quarter of it is acknowledged: fewer wake-ups than one per ack.
        self._reopen_at = max_in_flight - max(1, max_in_flight // 4)
        self._room: asyncio.Future[None] | None = None
        # Insertion order is deadline order for publishes on the default timeout (a retry moves to the end).
        self._pending: dict[bytes, _Pending] = {}
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._counter = itertools.count()
        self._prefix = b""
        self._own_connection = own_connection
        self._wire: PublishConnection | None = None
        self._subscription: Subscription | None = None
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_request: asyncio.Future[None] | None = None

    @property
    def in_flight(self) -> int:
        """Publishes sent and not yet acknowledged (nor failed)."""
        return len(self._pending)

    @property
    def uses_own_connection(self) -> bool:
        """True when publishes and acks go over the publisher's own `PublishConnection`, not over `nc`."""
        return self._wire is not None

    @property
    def is_connected(self) -> bool:
        """Whether a publish can be sent now (one sent while not connected fails at once)."""
        return self._wire.is_connected if self._wire is not None else self._nc.is_connected

    async def wait_connected(self) -> None:
        """Returns once a publish will not fail for want of a connection: with a shared `nc` at once (nats-py
        buffers publishes while it reconnects)."""
        if self._wire is not None:
            await self._wire.wait_connected()

    async def start(self) -> None:
        """Opens the publisher's own connection (or subscribes its reply inbox on `nc`); call once before publishing."""
        loop = self._loop = asyncio.get_running_loop()
        if self._own_connection:
            self._wire = await self._open_wire()
        if self._wire is not None:
            self._prefix = self._wire.reply_prefix.encode()
        else:
            # nats-py's flusher completes the future it is handed unless it is already done: one serves every wake-up.
            self._flush_request = loop.create_future()
            self._flush_request.set_result(None)
            inbox = self._nc.new_inbox()
            self._prefix = f"{inbox}.".encode()
            # Unbounded: the window already bounds how many acks can be pending.
            self._subscription = await self._nc.subscribe(
                f"{inbox}.*", cb=self._on_reply_message, pending_msgs_limit=0, pending_bytes_limit=0
            )
        self._started = True

    async def _open_wire(self) -> PublishConnection | None:
        """A started connection of the publisher's own to the server `nc` is connected to, which dials the
        server `nc` is on at each reconnect (so it follows `nc` to another server of a cluster); None (publish on
        `nc`) when it cannot connect the way `nc` did."""
        url = self._nc.connected_url
        if url is None:
            raise JetStreamPublishError("", "the NATS connection is not connected")
        last_url = url.geturl()

        def server_of_nc() -> str:
            nonlocal last_url
            current = self._nc.connected_url  # None while nc itself reconnects: the last server it was on
            if current is not None:
                last_url = current.geturl()
            return last_url

        wire = None
        try:
            wire = PublishConnection(server_of_nc, f"{self._nc.options.get('name') or 'kairos'}-publisher")
            await wire.start(self._on_reply)
        except UnsupportedServerError as reason:
            log.info("jetstream publisher shares the NATS connection", reason=str(reason))
            if wire is not None:
                await wire.close()
            return None
        return wire

    def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | HeaderBlock | None = None,
        msg_id: str | None = None,
        stream: str | None = None,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> Awaitable[PubAck]:
        """Publishes; awaiting the result gives JetStream's ack, or raises a `JetStreamPublishError` when it does
        not come. With room in the window the result is the ack's future itself, sent already: no coroutine per
        publish. A publish that cannot be sent at all (bad subject, payload too large) raises here."""
        header = self._checked(subject, payload, headers, msg_id, stream)
        if len(self._pending) < self._max_in_flight:
            return self._send_new(subject, payload, header, timeout, attempts)
        return self._send_when_room(subject, payload, header, timeout, attempts)

    async def submit(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | HeaderBlock | None = None,
        msg_id: str | None = None,
        stream: str | None = None,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> asyncio.Future[PubAck]:
        """Sends a publish and returns the future of its ack without waiting for it.

        Waits only while `max_in_flight` publishes are unacknowledged. Each attempt waits `timeout` seconds (the
        publisher's default when None); after `attempts` attempts the future fails with `PublishTimeoutError`.
        `headers` is a mapping (checked on every call) or a `HeaderBlock` (checked once). `msg_id` sets
        `Nats-Msg-Id` (without one a retry may store the message twice); `stream` sets `Nats-Expected-Stream`,
        so a subject captured by another stream is refused.
        """
        header = self._checked(subject, payload, headers, msg_id, stream)
        await self._wait_for_room(subject)
        return self._send_new(subject, payload, header, timeout, attempts)

    def submit_nowait(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | HeaderBlock | None = None,
        msg_id: str | None = None,
        stream: str | None = None,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> asyncio.Future[PubAck]:
        """`submit` without waiting: the publish is queued on the connection before this returns. With
        `max_in_flight` publishes unacknowledged it sends nothing and raises `WindowFullError` (it goes ahead of
        publishes waiting in `submit`)."""
        header = self._checked(subject, payload, headers, msg_id, stream)
        if len(self._pending) >= self._max_in_flight:
            raise WindowFullError(f"{self._max_in_flight} publishes are waiting for their ack")
        return self._send_new(subject, payload, header, timeout, attempts)

    async def close(self) -> None:
        """Stops listening for acks; publishes still waiting fail with `PublisherClosedError`."""
        self._started = False
        subscription, self._subscription = self._subscription, None
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if self._wire is not None:
            await self._wire.close()
        if subscription is not None:
            # The connection may already be closed; there is nothing left to undo then.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._finish(entry, error=PublisherClosedError(entry.subject, "the publisher was closed"))
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    # ------------------------------------------------------------------------------------ internals

    def _checked(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str] | HeaderBlock | None,
        msg_id: str | None,
        stream: str | None,
    ) -> bytes | None:
        """The header block of a publish (None: no headers), once the publish is known to be sendable."""
        if not self._started:
            raise RuntimeError("JetStreamPublisher.start() was not called")
        if subject.split() != [subject]:  # empty, or whitespace in it (as the regex \s, ~3x faster)
            raise ValueError(f"invalid NATS subject {subject!r}")
        max_payload = self._wire.max_payload if self._wire is not None else self._nc.max_payload
        if len(payload) > max_payload:
            raise PayloadTooLargeError(subject, f"payload of {len(payload)} bytes exceeds {max_payload}")
        if isinstance(headers, HeaderBlock):
            if msg_id is None and stream is None:
                return headers.block
            if (msg_id is not None and MSG_ID_HEADER in headers.names) or (
                stream is not None and EXPECTED_STREAM_HEADER in headers.names
            ):
                raise ValueError("msg_id or stream repeats a header of the HeaderBlock")
            lines = headers.lines
        elif headers:
            if msg_id is not None or stream is not None:
                headers = dict(headers)
                if msg_id is not None:
                    headers[MSG_ID_HEADER] = msg_id
                if stream is not None:
                    headers[EXPECTED_STREAM_HEADER] = stream
            return encode_headers(headers)
        elif msg_id is None and stream is None:
            return None
        else:
            lines = b""
        if msg_id is not None:
            lines += _header_line(MSG_ID_HEADER, msg_id)
        if stream is not None:
            lines += _cached_header_line(EXPECTED_STREAM_HEADER, stream)
        return _header_block(lines)

    async def _wait_for_room(self, subject: str) -> None:
        while len(self._pending) >= self._max_in_flight:
            if self._room is None or self._room.done():
                self._room = self._loop.create_future()
            await self._room
            if not self._started:
                raise PublisherClosedError(subject, "the publisher was closed")

    async def _send_when_room(
        self, subject: str, payload: bytes, header: bytes | None, timeout: float | None, attempts: int | None
    ) -> PubAck:
        await self._wait_for_room(subject)
        return await self._send_new(subject, payload, header, timeout, attempts)

    def _send_new(
        self, subject: str, payload: bytes, header: bytes | None, timeout: float | None, attempts: int | None
    ) -> asyncio.Future[PubAck]:
        future = self._loop.create_future()
        reply = b"%s%d" % (self._prefix, next(self._counter))
        if header is None:
            command = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply, len(payload), payload)
        else:
            size = len(header)
            command = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                subject.encode(),
                reply,
                size,
                size + len(payload),
                header,
                payload,
            )
        entry = _Pending(subject, command, timeout or self._timeout, attempts or self._attempts, future)
        self._pending[reply] = entry
        self._send(reply, entry)
        return future

    def _send(self, reply: bytes, entry: _Pending) -> None:
        """Sends (or sends again) a publish already in `_pending` and starts its attempt's deadline."""
        entry.attempts_left -= 1
        entry.deadline = deadline = self._loop.time() + entry.timeout
        if entry.timeout != self._timeout:
            entry.timer = self._loop.call_at(deadline, self._expire_one, reply)
        elif self._sweep_timer is None:
            self._sweep_timer = self._loop.call_at(deadline, self._sweep)
        if self._wire is not None:
            try:
                self._wire.send(entry.command)
            except WireDisconnectedError as error:
                self._unsent(reply, entry, str(error))
            return
        # What `nc.publish` does once it has built the command: queue it on the connection and wake the flusher
        # (without `_send_command`'s wait for a flush when the buffer is over its limit: the window bounds it).
        nc = self._nc
        if nc.is_closed:
            self._unsent(reply, entry, "the connection is closed")
            return
        nc._pending.append(entry.command)
        nc._pending_data_size += len(entry.command)
        flush_queue = nc._flush_queue
        if flush_queue is not None and flush_queue.empty() and nc.is_connected:
            flusher = nc._flusher_task
            if flusher is None or flusher.done():
                spawn(nc._flush_pending(), "jetstream-publish-flush")
            else:
                flush_queue.put_nowait(self._flush_request)

    def _unsent(self, reply: bytes, entry: _Pending, reason: str) -> None:
        """Fails a publish whose command could not be handed to a connection."""
        if self._pending.pop(reply, None) is entry:
            self._finish(entry, error=JetStreamPublishError(entry.subject, f"cannot send: {reason}"))

    def _sweep(self) -> None:
        """Ends or retries the attempts on the default timeout whose deadline passed, then waits for the next."""
        # `_sweep_timer` stays set (to this spent timer) until the end, so a retry below does not arm another.
        horizon = self._loop.time() + _CLOCK_SLACK_S
        expired = []
        for reply, entry in self._pending.items():
            if entry.timer is not None:
                continue
            if entry.deadline > horizon:
                break
            expired.append((reply, entry))
        for reply, entry in expired:
            if self._pending.get(reply) is entry:
                self._expire(reply, entry)
        self._sweep_timer = None
        for entry in self._pending.values():
            if entry.timer is None:
                self._sweep_timer = self._loop.call_at(entry.deadline, self._sweep)
                break

    def _expire_one(self, reply: bytes) -> None:
        entry = self._pending.get(reply)
        if entry is not None:
            entry.timer = None
            self._expire(reply, entry)

    def _expire(self, reply: bytes, entry: _Pending) -> None:
        del self._pending[reply]
        if entry.future.done():  # cancelled by its caller: stop retrying
            self._finish(entry)
        elif entry.attempts_left > 0:
            self._pending[reply] = entry  # at the end: the latest deadline
            self._send(reply, entry)
        else:
            self._finish(entry, error=PublishTimeoutError(entry.subject, f"no ack within {entry.timeout:g} s"))

    async def _on_reply_message(self, message: Msg) -> None:
        """An ack through nats-py, when the publisher shares `nc`."""
        headers = message.headers
        self._on_reply(
            message.subject.encode(), message.data, bool(headers) and headers.get(_STATUS_HEADER) == _NO_RESPONDERS
        )

    def _on_reply(self, reply: bytes, data: bytes, no_responders: bool) -> None:
        """An ack: its reply subject and payload, or the server's word that no stream captures the subject."""
        entry = self._pending.pop(reply, None)
        if entry is None:
            return  # a late ack of an attempt already answered, or of a publish that failed
        if no_responders:
            self._finish(entry, error=NoStreamError(entry.subject, "no stream captures this subject"))
            return
        try:
            document = orjson.loads(data)
            error = document.get("error")
            if error is None:
                self._finish(entry, ack=PubAck(document["stream"], document["seq"], document.get("duplicate", False)))
                return
            err_code = error.get("err_code", 0)
            kind = SubjectNotEmptyError if err_code == _ERR_WRONG_LAST_SEQUENCE else JetStreamPublishError
            failure = kind(entry.subject, error.get("description", "error"), error.get("code", 0), err_code)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as problem:
            failure = JetStreamPublishError(entry.subject, f"unreadable ack {data[:200]!r}: {problem!r}")
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
