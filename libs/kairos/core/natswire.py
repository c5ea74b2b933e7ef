"""A NATS connection of its own for JetStream publishing: the wire under `JetStreamPublisher`.

Publishing a message and reading its ack through nats-py costs a coroutine chain per publish and, per ack, a
regex parse, a `Msg` object, a queue hop and a task wake-up. Here the connection is a plain asyncio.Protocol:
publishes are protocol commands joined into one write per event-loop turn, and replies on the connection's own
inbox (`reply_prefix` + anything) are parsed in `data_received` and handed to one synchronous callback. It
speaks only what publishing needs (INFO, CONNECT with user/password or token from the URL, SUB of its inbox,
PING/PONG, MSG/HMSG, +OK, -ERR) and raises `UnsupportedServerError` for anything else (TLS, NKeys, JWT), for
which the publisher uses nats-py instead. While disconnected, `send` raises `WireDisconnectedError` at once,
and the connection reconnects in the background, re-subscribing its inbox; losses and reconnects are logged
without credentials. Given a function instead of a URL, it asks it for the server to dial on every (re)connect:
the publisher passes its nats-py client's current server, so the wire follows that client to another server of
a cluster.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import orjson
import structlog

from kairos.core.tasks import cancel_and_wait, spawn

log = structlog.get_logger(__name__)

DEFAULT_PORT = 4222
RECONNECT_WAIT_S = 0.5
PING_INTERVAL_S = 20.0
MAX_OUTSTANDING_PINGS = 2
MAX_CONTROL_LINE = 4096
_CRLF = b"\r\n"
_NO_RESPONDERS_STATUS = b"NATS/1.0 503"
_INBOX_SID = b"1"

# (reply subject, payload, no_responders): called for every message on the inbox.
ReplyCallback = Callable[[bytes, bytes, bool], None]


class WireError(Exception):
    """The wire could not connect, or the server refused it."""


class WireDisconnectedError(WireError, ConnectionError):
    """A publish was sent while the connection was down."""


class UnsupportedServerError(WireError):
    """The server asks for something this wire does not speak (TLS, NKey or JWT authentication)."""


def redacted(url: str) -> str:
    """`url` without its credentials, fit for logs."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class PublishConnection(asyncio.Protocol):
    """One NATS connection that publishes and receives the replies on its own inbox."""

    def __init__(
        self,
        url: str | Callable[[], str],
        name: str,
        *,
        reconnect_wait_s: float = RECONNECT_WAIT_S,
        ping_interval_s: float = PING_INTERVAL_S,
        on_connection_change: Callable[[bool], None] | None = None,
    ) -> None:
        """`url` is the server's, or a function giving the URL to dial on each (re)connect (a URL without
        credentials keeps those of the one before). `on_connection_change(False)` is called when the connection
        is lost, `(True)` when it is back."""
        self._url_of = url if callable(url) else lambda: url
        self._credentials: dict[str, str] = {}
        self._use_server(self._url_of())
        self._name = name
        self._reconnect_wait_s = reconnect_wait_s
        self._ping_interval_s = ping_interval_s
        self._up = asyncio.Event()
        self._on_connection_change = on_connection_change
        self.reply_prefix = f"_INBOX.{secrets.token_hex(11)}."
        self.max_payload = 1 << 20
        self._on_reply: ReplyCallback | None = None
        self._transport: asyncio.Transport | None = None
        self._connected = False
        self._closing = False
        self._buffer = b""
        self._outgoing: list[bytes] = []
        self._handshake: asyncio.Future[dict] | None = None
        self._pong: asyncio.Future[None] | None = None
        self._outstanding_pings = 0
        self._ping_timer: asyncio.TimerHandle | None = None
        self._reconnecting: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def wait_connected(self) -> None:
        """Returns once the connection is up (at once when it is)."""
        await self._up.wait()

    async def start(self, on_reply: ReplyCallback, timeout_s: float = 10.0) -> None:
        """Connects (within `timeout_s`) and subscribes the inbox; `on_reply` receives every reply."""
        self._loop = asyncio.get_running_loop()
        self._on_reply = on_reply
        async with asyncio.timeout(timeout_s):
            await self._connect()

    def send(self, command: bytes) -> None:
        """Queues one whole protocol command (e.g. an HPUB); all queued in one event-loop turn go in one write."""
        if not self._connected:
            raise WireDisconnectedError(f"not connected to NATS at {self._where}")
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(command)

    async def close(self) -> None:
        self._closing = True
        self._connected = False
        self._up.clear()
        await cancel_and_wait(self._reconnecting)
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        if self._transport is not None:
            self._flush()
            self._transport.close()
            self._transport = None

    # ------------------------------------------------------------------------------------ connecting

    async def _connect(self) -> None:
        self._use_server(self._url_of())
        self._buffer = b""
        self._handshake = self._loop.create_future()
        self._pong = self._loop.create_future()
        await self._loop.create_connection(lambda: self, self._host, self._port)
        info = await self._handshake
        if info.get("tls_required"):
            self._drop()
            raise UnsupportedServerError("the server requires TLS")
        if info.get("auth_required") and not self._credentials:
            self._drop()
            raise UnsupportedServerError("the server requires NKey or JWT authentication")
        self.max_payload = int(info.get("max_payload", self.max_payload))
        options = {
            "verbose": False,
            "pedantic": False,
            "lang": "python-kairos-wire",
            "version": "1",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
            "echo": False,
            "name": self._name,
            **self._credentials,
        }
        self._transport.write(
            b"CONNECT %s\r\nSUB %s* %s\r\nPING\r\n" % (orjson.dumps(options), self.reply_prefix.encode(), _INBOX_SID)
        )
        await self._pong  # the server answers PING only once it accepted CONNECT and SUB
        self._connected = True
        self._up.set()
        self._outstanding_pings = 0
        self._ping_timer = self._loop.call_later(self._ping_interval_s, self._ping)

    def _use_server(self, url: str) -> None:
        """Makes `url` the server to connect to (raises UnsupportedServerError for a scheme other than nats://)."""
        parts = urlsplit(url)
        if parts.scheme not in ("nats", ""):
            raise UnsupportedServerError(f"scheme {parts.scheme!r} (only nats://)")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or DEFAULT_PORT
        if parts.username and parts.password is not None:
            self._credentials = {"user": unquote(parts.username), "pass": unquote(parts.password)}
        elif parts.username:
            self._credentials = {"auth_token": unquote(parts.username)}
        self._where = redacted(url)

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing:
            attempt += 1
            await asyncio.sleep(self._reconnect_wait_s)  # back-off between attempts, not a wait for a condition
            try:
                async with asyncio.timeout(max(1.0, 4 * self._reconnect_wait_s)):
                    await self._connect()
            except (OSError, TimeoutError, WireError) as error:
                self._drop()
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("nats wire reconnect failed", nats_url=self._where, attempt=attempt, error=str(error))
                continue
            log.info("nats wire reconnected", nats_url=self._where, attempts=attempt)
            if self._on_connection_change is not None:
                self._on_connection_change(True)
            return

    def _ping(self) -> None:
        if not self._connected:
            return
        if self._outstanding_pings >= MAX_OUTSTANDING_PINGS:
            log.warning("nats wire: server stopped answering PING; reconnecting", nats_url=self._where)
            self._drop()
            return
        self._outstanding_pings += 1
        self._transport.write(b"PING\r\n")
        self._ping_timer = self._loop.call_later(self._ping_interval_s, self._ping)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and self._transport is not None:
            self._transport.write(b"".join(outgoing))

    # ------------------------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        was_connected, self._connected = self._connected, False
        self._up.clear()
        self._transport = None
        self._outgoing.clear()
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        for waiter in (self._handshake, self._pong):
            if waiter is not None and not waiter.done():
                waiter.set_exception(WireDisconnectedError(f"connection to {self._where} lost: {exc!r}"))
                waiter.exception()  # retrieved here: a failed handshake is reported by `_connect`'s caller
        if was_connected and not self._closing:
            log.warning("nats wire disconnected", nats_url=self._where, error=repr(exc))
            if self._on_connection_change is not None:
                self._on_connection_change(False)
            self._reconnecting = spawn(self._reconnect(), "nats-wire-reconnect")

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        try:
            consumed = self._parse(buffer)
        except WireError as error:
            log.error("nats wire protocol error; reconnecting", nats_url=self._where, error=str(error))
            self._buffer = b""
            self._drop()
            return
        self._buffer = buffer[consumed:]
        if len(self._buffer) > self.max_payload + MAX_CONTROL_LINE:
            log.error("nats wire: unparsable input; reconnecting", nats_url=self._where)
            self._drop()

    def _parse(self, buffer: bytes) -> int:
        """Handles every whole protocol line and message in `buffer`; returns how many bytes it used."""
        position, size = 0, len(buffer)
        while position < size:
            end = buffer.find(_CRLF, position)
            if end < 0:
                return position
            if buffer.startswith(b"MSG ", position) or buffer.startswith(b"HMSG ", position):
                fields = buffer[position:end].split(b" ")
                try:
                    total = int(fields[-1])
                    header_size = int(fields[-2]) if fields[0] == b"HMSG" else 0
                except ValueError as error:
                    raise WireError(f"malformed {fields[0]!r} line") from error
                start = end + 2
                if start + total + 2 > size:
                    return position
                no_responders = buffer.startswith(_NO_RESPONDERS_STATUS, start, start + header_size)
                position = start + total + 2
                try:
                    self._on_reply(fields[1], buffer[start + header_size : start + total], no_responders)
                except Exception:  # one reply's trouble must not cost the connection the replies after it
                    log.exception("nats wire: reply callback failed", subject=fields[1].decode(errors="replace"))
                continue
            line = buffer[position:end]
            position = end + 2
            if line == b"PING":
                self._transport.write(b"PONG\r\n")
            elif line == b"PONG":
                self._outstanding_pings = 0
                if self._pong is not None and not self._pong.done():
                    self._pong.set_result(None)
            elif line.startswith(b"INFO "):
                info = orjson.loads(line[5:])
                if self._handshake is not None and not self._handshake.done():
                    self._handshake.set_result(info)
            elif line.startswith(b"-ERR"):
                problem = line[5:].strip(b" '").decode(errors="replace")
                if self._pong is not None and not self._pong.done():
                    self._pong.set_exception(WireError(f"NATS at {self._where} refused the connection: {problem}"))
                else:
                    log.warning("nats wire: server error", nats_url=self._where, error=problem)
            elif line != b"+OK":
                raise WireError(f"unexpected protocol line {line[:80]!r}")
        return position
