"""The ingress's HTTP server (`start_http`, the real uvicorn set-up on a real socket) against clients too slow to
send a request (Slowloris): each gets 408 and its connection is closed once the request timeout has passed, while
a request the app is still working on is left alone and other clients are served throughout. A request head over
the limit gets 431 (a large body does not count towards it; a request target too long to parse does), and bytes
that are not HTTP a JSON 400. On stop, a client still sending its request is answered 503 at once instead of being
waited for. Should the slow-client check fail, the server serves on.

Every wait is bounded by asyncio.timeout; the app's slow request waits on an event the test sets, not a sleep."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from kairos.ingress.asgi import Answer, send_answer
from kairos.ingress.httpserver import MAX_HEAD_BYTES, EmbeddedServer, start_http

REQUEST_TIMEOUT_S = 1
WAIT_S = 15.0
HEADERS = b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
PARTIAL_BODY = HEADERS % b"/hooks/x" + b"content-length: 100\r\n\r\n" + b"x" * 10


def request(path: bytes) -> bytes:
    return HEADERS % path + b"content-length: 2\r\n\r\n{}"


class SlowWhenAsked:
    """Reads the body and answers 202, except for `/slow`, which it answers once `release` is set."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        self.reading.set()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            more = message.get("more_body", False)
        if scope["path"] == "/slow":
            self.slow_started.set()
            await self.release.wait()
        await send_answer(send, Answer(202, b'{"status":"accepted"}'))


async def status_of_response(reader: asyncio.StreamReader) -> bytes:
    """Reads one whole response (head and Content-Length body); returns its status line."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
    await reader.readexactly(length)
    return head.partition(b"\r\n")[0]


async def connect(stack: AsyncExitStack, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stack.callback(writer.close)
    return reader, writer


async def test_clients_too_slow_to_send_a_request_get_408_and_are_closed() -> None:
    app = SlowWhenAsked()
    async with AsyncExitStack() as stack, asyncio.timeout(WAIT_S):
        refused: list[int] = []
        port = await start_http(stack, app, "127.0.0.1", 0, REQUEST_TIMEOUT_S, on_refused=refused.append)
        stack.callback(app.release.set)
        silent, partial_headers, partial_body, slow_app = [await connect(stack, port) for _ in range(4)]
        partial_headers[1].write(HEADERS % b"/hooks/x")
        partial_body[1].write(PARTIAL_BODY)
        slow_app[1].write(request(b"/slow"))
        await app.slow_started.wait()

        answers = await asyncio.gather(*(reader.read() for reader, _ in (silent, partial_headers, partial_body)))
        for answer in answers:  # everything sent before the server closed the connection
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
            assert answer.endswith(b'{"error":"request_timeout","message":"the request did not arrive whole in time"}')
        assert refused == [408, 408, 408]  # counted (the ingress counts them in its requests-by-status metric)

        # The request the app held all that time (over the timeout) is still answered, and a new client is served.
        app.release.set()
        assert await status_of_response(slow_app[0]) == b"HTTP/1.1 202 Accepted"
        reader, writer = await connect(stack, port)
        writer.write(request(b"/hooks/x"))
        assert await status_of_response(reader) == b"HTTP/1.1 202 Accepted"


async def test_a_request_head_over_the_limit_gets_431_and_the_connection_is_closed() -> None:
    app = SlowWhenAsked()
    async with AsyncExitStack() as stack, asyncio.timeout(WAIT_S):
        refused: list[int] = []
        port = await start_http(stack, app, "127.0.0.1", 0, on_refused=refused.append)
        big_header = b"x-padding: %s\r\n" % (b"a" * (MAX_HEAD_BYTES // 2))
        fits, one_huge, many, long_url = [await connect(stack, port) for _ in range(4)]
        fits[1].write(HEADERS % b"/hooks/x" + big_header + b"content-length: 2\r\n\r\n{}")
        assert await status_of_response(fits[0]) == b"HTTP/1.1 202 Accepted"
        # a body many times the head limit (bounded by the app, not by that limit) is read whole, over many reads
        body = b'"%s"' % (b"b" * (8 * MAX_HEAD_BYTES))
        fits[1].write(HEADERS % b"/hooks/x" + b"content-length: %d\r\n\r\n%s" % (len(body), body))
        assert await status_of_response(fits[0]) == b"HTTP/1.1 202 Accepted"
        one_huge[1].write(HEADERS % b"/hooks/x" + b"x-padding: " + b"a" * (2 * MAX_HEAD_BYTES))
        many[1].write(HEADERS % b"/hooks/x" + big_header * 3)
        long_url[1].write(request(b"/hooks/" + b"a" * MAX_HEAD_BYTES))  # in one write: httptools refuses it first
        for reader, _ in (one_huge, many, long_url):
            answer = await reader.read()  # everything sent before the server closed the connection
            assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer
            assert b'"error":"headers_too_large"' in answer
        assert refused == [431, 431, 431]


async def test_bytes_that_are_not_http_get_a_json_400() -> None:
    refused: list[int] = []
    async with AsyncExitStack() as stack, asyncio.timeout(WAIT_S):
        port = await start_http(stack, SlowWhenAsked(), "127.0.0.1", 0, on_refused=refused.append)
        reader, writer = await connect(stack, port)
        writer.write(b"\x16\x03\x01\x02\x00 not http\r\n\r\n")  # e.g. a TLS hello sent to the plain port
        answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"), answer
    assert answer.endswith(b'{"error":"bad_request","message":"the request is not valid HTTP/1.1"}')
    assert refused == [400]


async def test_on_stop_a_client_still_sending_its_request_gets_503_at_once() -> None:
    app = SlowWhenAsked()
    refused: list[int] = []
    async with asyncio.timeout(WAIT_S):
        async with AsyncExitStack() as stack:
            port = await start_http(stack, app, "127.0.0.1", 0, 3600, on_refused=refused.append)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(PARTIAL_BODY)
            await app.reading.wait()
        # the server has stopped (leaving the stack) without waiting for the rest of the body
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
    assert refused == [503]


async def test_a_failing_slow_client_check_does_not_stop_the_server(monkeypatch) -> None:
    """The check reads uvicorn's connection internals; should they change, it fails and the server serves on."""
    checked = asyncio.Event()

    def failing_check(self, now: float) -> None:
        checked.set()
        raise AttributeError("'HttpToolsProtocol' object has no attribute 'cycle'")

    monkeypatch.setattr(EmbeddedServer, "_time_out_slow_clients", failing_check)
    async with AsyncExitStack() as stack, asyncio.timeout(WAIT_S):
        port = await start_http(stack, SlowWhenAsked(), "127.0.0.1", 0)
        await checked.wait()
        reader, writer = await connect(stack, port)
        writer.write(request(b"/hooks/x"))
        assert await status_of_response(reader) == b"HTTP/1.1 202 Accepted"
