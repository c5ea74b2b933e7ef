"""The ingress's HTTP surface as a plain ASGI application: a fixed route table matched by path segments, no
framework in the request path (the webhook endpoint's throughput is measured against a bare handler). Every
answer, including unknown paths (404) and wrong methods (405 with `Allow`), is a JSON body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
import structlog

log = structlog.get_logger(__name__)

JSON = b"application/json"
Handler = Callable[["Request"], Awaitable["Answer"]]


@dataclass(slots=True)
class Answer:
    """One HTTP response: status, body and content type, plus extra headers (`Retry-After`, `Allow`)."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


def json_answer(status: int, document: dict, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
    return Answer(status, orjson.dumps(document), JSON, headers)


class BodyTooLarge(Exception):
    """The request body went over the limit while it was read."""


class ClientGone(Exception):
    """The client disconnected before sending the whole body: there is no one left to answer."""


class Request:
    """The parts of an ASGI HTTP request a handler reads: the headers (raw bytes by lower-case name, decoded only
    where a handler needs text), the path parameter, the body."""

    __slots__ = ("_receive", "headers", "param")

    def __init__(self, headers: dict[bytes, bytes], param: str, receive: Callable[[], Awaitable[dict]]) -> None:
        self.headers = headers
        self.param = param
        self._receive = receive

    async def body(self, limit: int) -> bytes:
        """The whole body; raises BodyTooLarge when Content-Length declares more than `limit` bytes, or as soon as
        more than `limit` bytes arrived."""
        declared = self.headers.get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
        chunks, size = [], 0
        while True:
            message = await self._receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)


def headers_of(scope: dict) -> dict[bytes, bytes]:
    """The request headers by lower-case name (ASGI servers already lower-case them); the first of repeats wins."""
    return dict(reversed(scope["headers"]))


class Routes:
    """Routes of the form `/a/b`, `/a/{param}` or `/a/{param}/b`: at most one parameter, one segment long."""

    def __init__(self) -> None:
        self._static: dict[str, dict[str, Handler]] = {}
        # segment count -> (segments before the parameter, segments after it, handlers by method)
        self._patterns: dict[int, list[tuple[list[str], list[str], dict[str, Handler]]]] = {}

    def add(self, methods: tuple[str, ...], path: str, handler: Handler) -> None:
        segments = path.strip("/").split("/")
        params = [index for index, segment in enumerate(segments) if segment.startswith("{")]
        if len(params) > 1:
            raise ValueError(f"route {path!r} has more than one parameter")
        if params:
            index = params[0]
            before, after = segments[:index], segments[index + 1 :]
            candidates = self._patterns.setdefault(len(segments), [])
            by_method = next((found for b, a, found in candidates if (b, a) == (before, after)), None)
            if by_method is None:
                by_method = {}
                candidates.append((before, after, by_method))
        else:
            by_method = self._static.setdefault(path, {})
        for method in methods:
            by_method[method] = handler

    def match(self, path: str) -> tuple[dict[str, Handler], str] | None:
        """The handlers by method of the route matching `path`, and the parameter's value ("" when none)."""
        static = self._static.get(path)
        if static is not None:
            return static, ""
        segments = path.strip("/").split("/")
        for before, after, by_method in self._patterns.get(len(segments), ()):
            index = len(before)
            value = segments[index]
            if value and segments[:index] == before and segments[index + 1 :] == after:
                return by_method, value
        return None


class App:
    """The ASGI application: routes each request to its handler and sends the handler's Answer."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websocket support: the server runs with lifespan="off"
        matched = self._routes.match(scope["path"])
        if matched is None:
            answer = json_answer(404, {"error": "not_found", "message": f"no route for {scope['path']}"})
        else:
            by_method, param = matched
            handler = by_method.get(scope["method"])
            if handler is None:
                allow = ", ".join(sorted(by_method))
                answer = json_answer(
                    405,
                    {"error": "method_not_allowed", "message": f"use {allow}"},
                    ((b"allow", allow.encode()),),
                )
            else:
                try:
                    answer = await handler(Request(headers_of(scope), param, receive))
                except ClientGone:
                    return
                except Exception:
                    log.exception("request failed", path=scope["path"])
                    answer = json_answer(500, {"error": "internal", "message": "the request could not be handled"})
        await send_answer(send, answer)


async def send_answer(send, answer: Answer) -> None:
    headers = [(b"content-type", answer.content_type), (b"content-length", str(len(answer.body)).encode())]
    headers.extend(answer.headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
