"""`kairos.core.natswire.PublishConnection` against real nats-servers: the session server for publishing and
acks, servers of their own for authentication, restarts and a server that stops answering."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.protocol.command import hpub_cmd, pub_cmd

from kairos.core import messaging
from kairos.core.jetstream import EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER, encode_headers
from kairos.core.natsserver import MAX_PAYLOAD_BYTES, EmbeddedNatsServer
from kairos.core.natswire import PublishConnection, UnsupportedServerError, WireDisconnectedError, WireError

WAIT_S = 10.0


class ConnectionChanges:
    """Records `on_connection_change` calls; `lost` and `back` are set by them."""

    def __init__(self) -> None:
        self.lost, self.back = asyncio.Event(), asyncio.Event()

    def __call__(self, connected: bool) -> None:
        (self.back if connected else self.lost).set()


class Replies:
    """Collects the wire's replies by subject; `next(subject)` waits for one."""

    def __init__(self) -> None:
        self.arrived: dict[str, asyncio.Future[tuple[bytes, bool]]] = {}

    def _future(self, subject: str) -> asyncio.Future[tuple[bytes, bool]]:
        return self.arrived.setdefault(subject, asyncio.get_running_loop().create_future())

    def __call__(self, subject: bytes, payload: bytes, no_responders: bool) -> None:
        self._future(subject.decode()).set_result((payload, no_responders))

    async def next(self, subject: str) -> tuple[bytes, bool]:
        async with asyncio.timeout(WAIT_S):
            return await self._future(subject)


@pytest.fixture
async def stream(nc: Client) -> AsyncIterator[str]:
    """A fresh stream capturing `<prefix>.>`: yields the subject prefix."""
    prefix = f"wiretest.{uuid.uuid4().hex[:12]}"
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=prefix.replace(".", "_").upper(), subjects=[f"{prefix}.>"]))
    try:
        yield prefix
    finally:
        await js.delete_stream(prefix.replace(".", "_").upper())


async def started(url: str, replies: Replies, **options) -> PublishConnection:
    wire = PublishConnection(url, "wire-test", **options)
    await wire.start(replies, timeout_s=WAIT_S)
    return wire


async def test_publishes_are_acknowledged_and_a_repeat_on_a_subject_is_refused(nats_url, stream) -> None:
    replies = Replies()
    wire = await started(nats_url, replies)
    try:
        first_on_subject = encode_headers({EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: "0"})
        for index in range(3):
            wire.send(hpub_cmd(f"{stream}.once", f"{wire.reply_prefix}{index}", first_on_subject, b"body"))
        acks = [orjson.loads((await replies.next(f"{wire.reply_prefix}{index}"))[0]) for index in range(3)]
        assert acks[0]["seq"] == 1 and "error" not in acks[0]
        assert [ack["error"]["err_code"] for ack in acks[1:]] == [10071, 10071]
        assert wire.max_payload == MAX_PAYLOAD_BYTES  # as the server's INFO announced it
    finally:
        await wire.close()


async def test_a_subject_no_stream_captures_is_reported_as_no_responders(nats_url) -> None:
    replies = Replies()
    wire = await started(nats_url, replies)
    try:
        wire.send(pub_cmd(f"nostream.{uuid.uuid4().hex}", f"{wire.reply_prefix}x", b"lost"))
        payload, no_responders = await replies.next(f"{wire.reply_prefix}x")
        assert no_responders and payload == b""
    finally:
        await wire.close()


async def test_replies_split_over_many_reads_arrive_whole(nats_url, nc: Client) -> None:
    """Messages larger than one socket read, and many small ones in one read, are each delivered once."""
    replies = Replies()
    wire = await started(nats_url, replies)
    try:
        large = os.urandom(400_000)
        await nc.publish(f"{wire.reply_prefix}large", large, headers={"Kind": "large"})
        for index in range(200):
            await nc.publish(f"{wire.reply_prefix}small-{index}", b"%d" % index)
        await nc.flush()
        assert await replies.next(f"{wire.reply_prefix}large") == (large, False)
        for index in range(200):
            assert await replies.next(f"{wire.reply_prefix}small-{index}") == (b"%d" % index, False)
    finally:
        await wire.close()


async def test_a_failing_reply_callback_costs_only_its_own_reply(nats_url, nc: Client) -> None:
    replies = Replies()

    def fussy(subject: bytes, payload: bytes, no_responders: bool) -> None:
        if payload == b"bad":
            raise ValueError("cannot take this one")
        replies(subject, payload, no_responders)

    wire = PublishConnection(nats_url, "wire-test")
    await wire.start(fussy, timeout_s=WAIT_S)
    try:
        await nc.publish(f"{wire.reply_prefix}first", b"bad")
        await nc.publish(f"{wire.reply_prefix}second", b"good")
        await nc.flush()
        assert await replies.next(f"{wire.reply_prefix}second") == (b"good", False)
        assert wire.is_connected
    finally:
        await wire.close()


async def test_credentials_come_from_the_url_and_are_never_logged(tmp_path: Path, capsys) -> None:
    users = 'authorization { users = [ { user: "kairos", password: "p@ss word" } ] }'
    async with EmbeddedNatsServer(tmp_path / "users", extra_config=users) as server:
        url = f"nats://kairos:p%40ss%20word@{server.host}:{server.port}"
        wire = await started(url, Replies())
        assert wire.is_connected
        await wire.close()
        with pytest.raises(WireError, match=r"(?i)authorization"):
            await started(f"nats://kairos:wrong@{server.host}:{server.port}", Replies())
        with pytest.raises(UnsupportedServerError):
            await started(server.url, Replies())
    async with EmbeddedNatsServer(tmp_path / "token", extra_config='authorization { token: "t0ken" }') as server:
        wire = await started(f"nats://t0ken@{server.host}:{server.port}", Replies())
        assert wire.is_connected
        await wire.close()
    captured = capsys.readouterr()
    assert "p@ss" not in captured.out + captured.err and "t0ken" not in captured.out + captured.err


def test_schemes_other_than_nats_are_left_to_nats_py() -> None:
    with pytest.raises(UnsupportedServerError):
        PublishConnection("tls://127.0.0.1:4222", "wire-test")


async def test_sends_fail_at_once_while_the_server_is_down_and_resume_after_it_is_back(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path / "restart") as server:
        nc = await messaging.connect(server.url, "wire-restart-setup")
        await nc.jetstream().add_stream(StreamConfig(name="RESTART", subjects=["restart.>"]))
        await nc.close()
        replies, changes = Replies(), ConnectionChanges()
        wire = await started(server.url, replies, reconnect_wait_s=0.05, on_connection_change=changes)
        try:
            await server.stop()
            async with asyncio.timeout(WAIT_S):
                await changes.lost.wait()
            assert not wire.is_connected
            with pytest.raises(WireDisconnectedError):
                wire.send(pub_cmd("restart.a", f"{wire.reply_prefix}down", b"x"))
            await server.start()
            async with asyncio.timeout(WAIT_S):
                await changes.back.wait()
                await wire.wait_connected()
            wire.send(pub_cmd("restart.a", f"{wire.reply_prefix}up", b"x"))
            payload, _ = await replies.next(f"{wire.reply_prefix}up")
            assert orjson.loads(payload)["stream"] == "RESTART"
        finally:
            await wire.close()


async def test_a_url_function_is_asked_again_on_each_reconnect_and_keeps_the_credentials(tmp_path: Path) -> None:
    """Given a function, the wire dials whatever server it names at each reconnect; a URL without credentials
    (a server discovered in a cluster) is logged into with those of the URL before."""
    users = 'authorization { users = [ { user: "kairos", password: "secret" } ] }'
    async with (
        EmbeddedNatsServer(tmp_path / "a", extra_config=users) as first,
        EmbeddedNatsServer(tmp_path / "b", extra_config=users) as second,
    ):
        urls = [f"nats://kairos:secret@{first.host}:{first.port}"]
        replies, changes = Replies(), ConnectionChanges()
        wire = await started(lambda: urls[-1], replies, reconnect_wait_s=0.05, on_connection_change=changes)
        try:
            wire.send(pub_cmd("nostream.a", f"{wire.reply_prefix}first", b"x"))
            assert (await replies.next(f"{wire.reply_prefix}first"))[1]  # answered (no responders) by the first
            urls.append(second.url)
            first.kill()
            async with asyncio.timeout(WAIT_S):
                await changes.back.wait()
            wire.send(pub_cmd("nostream.a", f"{wire.reply_prefix}second", b"x"))
            assert (await replies.next(f"{wire.reply_prefix}second"))[1]
            async with httpx.AsyncClient() as http:
                connections = (await http.get(f"{second.monitoring_url}/connz")).json()["connections"]
            assert [connection["name"] for connection in connections] == ["wire-test"]
        finally:
            await wire.close()


async def test_a_server_that_stops_answering_ping_is_dropped(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path / "frozen") as server:
        changes = ConnectionChanges()
        wire = await started(
            server.url, Replies(), ping_interval_s=0.1, reconnect_wait_s=0.05, on_connection_change=changes
        )
        try:
            os.kill(server.pid, signal.SIGSTOP)
            try:
                async with asyncio.timeout(WAIT_S):
                    await changes.lost.wait()
            finally:
                os.kill(server.pid, signal.SIGCONT)
            async with asyncio.timeout(WAIT_S):
                await changes.back.wait()
            assert wire.is_connected
        finally:
            await wire.close()
