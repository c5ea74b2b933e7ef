"""A lean HTTP/1.1 load client for the benchmarks: requests pre-encoded as bytes over keep-alive connections, so the
client spends a few microseconds per request instead of the millisecond httpx needs (at a few hundred requests a
second httpx alone saturates a core here, and its queueing then shows up as server latency)."""

from __future__ import annotations

import asyncio
import socket


def request_bytes(path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Reads one response (status line, headers, Content-Length body); returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


class ConnectionPool:
    """Keep-alive connections to one local port, each carrying one request at a time; `post` waits for a free
    connection when all are busy, so a slow server shows up as latency rather than as more connections."""

    def __init__(self, port: int, size: int) -> None:
        self._port = port
        self._size = size
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def __aenter__(self) -> ConnectionPool:
        for _ in range(self._size):
            self._idle.put_nowait(await connect(self._port))
        return self

    async def __aexit__(self, *_exc) -> None:
        while not self._idle.empty():
            self._idle.get_nowait()[1].close()

    async def post(self, request: bytes) -> int:
        reader, writer = await self._idle.get()
        try:
            writer.write(request)
            status = await read_response(reader)
        except BaseException:
            writer.close()
            self._idle.put_nowait(await connect(self._port))
            raise
        self._idle.put_nowait((reader, writer))
        return status
