"""The HTTP server the ingress serves webhooks on (and the benchmark's bare handler, for a fair comparison):
uvicorn with httptools and uvloop inside the service's own event loop, hardened for the internet. uvicorn bounds
neither how long a client may take to send a request nor how large a request head may grow, so this module adds
both: a request timeout checked once a second on uvicorn's own tick, and a head limit checked as data arrives. Its
own answers (those two, bytes that are not HTTP, a stop) are JSON like the app's, and a stop does not wait for
clients still sending."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kairos.core.config import DEFAULT_HTTP_REQUEST_TIMEOUT_S
from kairos.core.startup_errors import ListenError
from kairos.core.tasks import spawn
from kairos.ingress.endpoint import PUBLISH_ATTEMPTS, PUBLISH_TIMEOUT_S

log = structlog.get_logger(__name__)

# A request line and its headers together: far above what webhook senders send (a few KiB), far below memory trouble.
MAX_HEAD_BYTES = 64 * 1024
# httptools refuses a longer request target outright (a parse error, not a head over MAX_HEAD_BYTES).
MAX_URL_BYTES = 65535
# The server's own answers to a request that has not arrived whole: (status, reason phrase, JSON body).
HEAD_TOO_LARGE = (
    431,
    b"Request Header Fields Too Large",
    b'{"error":"headers_too_large","message":"the request line and headers must be at most %d bytes"}' % MAX_HEAD_BYTES,
)
REQUEST_TIMEOUT = (
    408,
    b"Request Timeout",
    b'{"error":"request_timeout","message":"the request did not arrive whole in time"}',
)
STOPPING = (503, b"Service Unavailable", b'{"error":"unavailable","message":"the server is stopping; retry"}')
NOT_HTTP = (400, b"Bad Request", b'{"error":"bad_request","message":"the request is not valid HTTP/1.1"}')
Refusal = tuple[int, bytes, bytes]
# On stop, requests in progress get this long to be answered (an accepted one waits for its ack, at most
# PUBLISH_TIMEOUT_S * PUBLISH_ATTEMPTS); uvicorn's default would wait for every connection without end.
GRACEFUL_STOP_S = 2 * PUBLISH_TIMEOUT_S * PUBLISH_ATTEMPTS
# A refused connection is half-closed after its answer, and what the client still sends is read and dropped for
# this long before the close: closing with unread data resets the connection, and the client may lose the answer.
LINGER_S = 2.0


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on a request's head (httptools keeps a head of any size in
    memory: a test request with 160 MB of headers was taken whole, so one client could exhaust it), and the
    refusal of a request that has not arrived whole, used for that bound, for bytes that are not HTTP, and by
    `EmbeddedServer`."""

    def __init__(self, *args, on_refused: Callable[[int], None] | None = None, **kwargs) -> None:
        """`on_refused(status)` is called for each answer the server gives on its own (400, 408, 431, 503)."""
        super().__init__(*args, **kwargs)
        self._on_refused = on_refused
        self._head_bytes = 0  # received since a head was last completed, outside a body
        self.refused = False

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # the rest of a refused request: dropped until the connection closes
        cycle = self.cycle
        in_body = cycle is not None and cycle.more_body
        super().data_received(data)
        if self.cycle is not cycle:  # a head was completed in `data`
            self._head_bytes = 0
        elif not in_body:  # `data` belongs to a head
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self.refuse(HEAD_TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes httptools cannot parse, as JSON like every other answer (its own is text); a
        request target too long to parse is a head over the limit (431), not bytes that are not HTTP."""
        self.refuse(HEAD_TOO_LARGE if len(self.url) > MAX_URL_BYTES else NOT_HTTP)

    def waiting_on_client(self) -> bool:
        """Whether the connection waits for its client to send (the rest of) a request: it neither idles between
        requests (uvicorn's keep-alive timer runs) nor holds a request that has arrived whole (the app's turn)."""
        if self.refused or self.timeout_keep_alive_task is not None:
            return False
        cycle = self.cycle
        return cycle is None or cycle.response_complete or cycle.more_body

    def refuse(self, answer: Refusal) -> None:
        """Ends a connection whose request has not arrived whole with `answer`, unless it owes an answer already
        (to a request the app holds, or one whose answer has begun): then it just closes."""
        cycle = self.cycle
        in_progress = cycle is not None and not cycle.response_complete
        if in_progress and (not cycle.more_body or cycle.response_started):
            self.transport.close()
            return
        if cycle is not None and cycle.more_body:  # the app waits for the rest of the body: it will not come
            cycle.disconnected = True
            cycle.message_event.set()
        status, reason, body = answer
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason, len(body), body)
        )
        if self._on_refused is not None:
            self._on_refused(status)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.refused = True
        self.loop.call_later(LINGER_S, self.transport.close)


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: signals belong to the process runtime, not to uvicorn. Once a second it
    also answers 408 and closes each connection whose client has taken over `request_timeout_s` to send a
    whole request (Slowloris): uvicorn's keep-alive timeout covers only the time between two requests, and
    restarts on every byte received. On stop, a client still sending its request gets 503 at once."""

    def __init__(self, config: uvicorn.Config, request_timeout_s: float) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self._request_timeout_s = request_timeout_s
        self._waiting: dict[object, tuple[object, float]] = {}  # connection -> (its request cycle, waiting since)

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # uvicorn ticks every 0.1 s
            try:
                self._time_out_slow_clients(time.monotonic())
            except Exception:  # e.g. uvicorn's connection internals changed: keep serving, say so
                log.exception("could not check for slow clients")
        return await super().on_tick(counter)

    def _time_out_slow_clients(self, now: float) -> None:
        """Refuses each connection that has waited for its client, within the same request, for too long."""
        waiting, refused = {}, 0
        for connection in self.server_state.connections:
            if not connection.waiting_on_client():
                continue
            cycle = connection.cycle
            seen = self._waiting.get(connection)
            since = seen[1] if seen is not None and seen[0] is cycle else now
            if now - since < self._request_timeout_s:
                waiting[connection] = (cycle, since)
            else:
                connection.refuse(REQUEST_TIMEOUT)
                refused += 1
        self._waiting = waiting
        if refused:
            log.info("refused connections too slow to send a request", count=refused, timeout_s=self._request_timeout_s)

    async def shutdown(self, sockets=None) -> None:
        for connection in list(self.server_state.connections):
            if connection.refused:
                connection.transport.close()
            elif connection.waiting_on_client():
                connection.refuse(STOPPING)
                connection.transport.close()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        self.ready.set()


async def start_http(
    stack: AsyncExitStack,
    app,
    host: str,
    port: int,
    request_timeout_s: float = DEFAULT_HTTP_REQUEST_TIMEOUT_S,
    on_refused: Callable[[int], None] | None = None,
) -> int:
    """Serves `app` on host:port (0 picks a free port); returns the bound port. `on_refused(status)` is called
    for each answer the server gives on its own, without the app (400, 408, 431, 503 on stop)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ListenError(
            f"HTTP cannot listen on {host}:{port} (KAIROS_HTTP_HOST, KAIROS_HTTP_PORT): {error.strerror or error}"
        ) from error
    # No proxy-headers middleware: nothing here reads the client address, and it costs a call per request.
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        http=functools.partial(BoundedHttpToolsProtocol, on_refused=on_refused),
        ws="none",
        timeout_graceful_shutdown=GRACEFUL_STOP_S,
    )
    server = EmbeddedServer(config, request_timeout_s)
    task = spawn(server.serve(sockets=[sock]), "ingress-http")
    ready = asyncio.create_task(server.ready.wait())

    async def stop() -> None:
        server.should_exit = True
        await task
        sock.close()

    stack.push_async_callback(stop)
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not server.ready.is_set():
        ready.cancel()
        task.result()
        raise OSError(f"ingress HTTP server stopped during start-up on {host}:{port}")
    return sock.getsockname()[1]
