"""Integration tests for `kairos.core.messaging` and `kairos.core.natsserver` against a real nats-server.

No mocks: the shared session server (`nats_url`) serves the idempotency and de-duplication tests; tests
that kill, restart or reconfigure a server start their own `EmbeddedNatsServer` in `tmp_path`.
Waits are bounded by `asyncio.timeout` and synchronise on events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from kairos.core import messaging
from kairos.core.messaging import (
    ALL_BUCKETS,
    DEAD_LETTERS_STREAM,
    EVENTS_STREAM,
    FIRES_STREAM,
    TRACE_STREAM,
    InvalidSubjectTokenError,
    NatsConnectError,
    NoJetStreamError,
    dead_letter_subject,
    event_subject,
    fire_subject,
    trace_subject,
)
from kairos.core.natsserver import EmbeddedNatsServer, NatsServerError, find_nats_server_binary, free_port

ALL_STREAMS = (FIRES_STREAM, EVENTS_STREAM, TRACE_STREAM, DEAD_LETTERS_STREAM)
KV_STREAMS = tuple(f"KV_{bucket}" for bucket in ALL_BUCKETS)
WAIT_S = 10.0


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- subjects ------------------------------------------------------------------------------------------


def test_subject_builders() -> None:
    assert fire_subject("ws1", "trg_01") == "kairos.fire.ws1.trg_01"
    assert event_subject("ws1", "thread.member_joined") == "kairos.events.ws1.thread.member_joined"
    assert trace_subject("ws1", "trg_01") == "kairos.trace.ws1.trg_01"
    assert dead_letter_subject("ws1", "trg_01") == "kairos.dead.ws1.trg_01"


@pytest.mark.parametrize("bad", ["a.b", "*", "a*", ">", "a>", "a b", " ", "a\tb", "a\nb", ""])
@pytest.mark.parametrize("builder", [fire_subject, trace_subject, dead_letter_subject])
def test_subject_builders_reject_bad_ids(builder, bad: str) -> None:
    with pytest.raises(InvalidSubjectTokenError):
        builder(bad, "trigger")
    with pytest.raises(InvalidSubjectTokenError):
        builder("ws", bad)


@pytest.mark.parametrize("bad_type", ["thread.*", "thread.>", "thread..joined", ".thread", "thread.", "a b", ""])
def test_event_subject_rejects_bad_event_types_and_workspaces(bad_type: str) -> None:
    with pytest.raises(InvalidSubjectTokenError):
        event_subject("ws", bad_type)
    with pytest.raises(InvalidSubjectTokenError):
        event_subject("w.s", "thread.member_joined")


def test_invalid_token_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"'\*'"):
        fire_subject("ws", "*")


# -- streams, buckets, publishing (shared session server) ------------------------------------------------


async def _configs(nc: Client) -> dict[str, StreamConfig]:
    js = nc.jetstream()
    return {name: (await js.stream_info(name)).config for name in ALL_STREAMS + KV_STREAMS}


async def test_ensure_all_is_idempotent(nc: Client) -> None:
    js = nc.jetstream()
    async with asyncio.timeout(WAIT_S):
        first_buckets = await messaging.ensure_all(js)
        before = await _configs(nc)
        second_buckets = await messaging.ensure_all(js)
        after = await _configs(nc)

    assert after == before
    fires = after[FIRES_STREAM]
    assert fires.subjects == ["kairos.fire.>"]
    assert fires.storage == StorageType.FILE
    assert fires.retention == RetentionPolicy.LIMITS
    assert fires.duplicate_window == 600
    assert fires.max_age == 7 * 24 * 3600
    assert after[TRACE_STREAM].max_age == 7 * 24 * 3600
    assert after[EVENTS_STREAM].subjects == ["kairos.events.>"]
    assert after[DEAD_LETTERS_STREAM].subjects == ["kairos.dead.>"]

    # The handles from both calls address the same buckets.
    key = _unique("k")
    await second_buckets.scheduler.put(key, b"v")
    assert (await first_buckets.scheduler.get(key)).value == b"v"


async def test_publish_fire_deduplicates_by_msg_id(nc: Client) -> None:
    js = nc.jetstream()
    subject = fire_subject(_unique("ws"), _unique("trg"))
    msg_id = _unique("fire")
    async with asyncio.timeout(WAIT_S):
        await messaging.ensure_streams(js)
        first = await messaging.publish_fire(js, subject, b"payload", msg_id)
        second = await messaging.publish_fire(js, subject, b"payload", msg_id)
        other = await messaging.publish_fire(js, subject, b"payload-2", _unique("fire"))
        info = await js.stream_info(FIRES_STREAM, subjects_filter=subject)
        stored = await js.get_msg(FIRES_STREAM, first.seq)

    assert first.stream == FIRES_STREAM
    assert not first.duplicate
    assert second.duplicate is True
    assert second.seq == first.seq
    assert not other.duplicate
    assert info.state.subjects == {subject: 2}  # the duplicate was not stored
    assert stored.data == b"payload"
    assert stored.headers is not None
    assert stored.headers[messaging.MSG_ID_HEADER] == msg_id


async def test_connect_failure_names_the_url() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(NatsConnectError, match=url):
        await messaging.connect(url, "test-no-server", connect_timeout=0.5)


async def test_a_list_of_servers_connects_to_the_one_that_is_up_and_never_logs_credentials(
    tmp_path: Path, capsys
) -> None:
    users = 'authorization { users = [ { user: "kairos", password: "s3cret" } ] }'
    down = [f"nats://kairos:s3cret@127.0.0.1:{free_port()}" for _ in range(2)]
    async with EmbeddedNatsServer(tmp_path, extra_config=users) as server:
        up = f"nats://kairos:s3cret@{server.host}:{server.port}"
        client = await messaging.connect(f"{down[0]}, {up},{down[1]}", "test-server-list")
        try:
            assert client.connected_url is not None and client.connected_url.port == server.port
            await client.flush(timeout=WAIT_S)
        finally:
            await client.close()
    with pytest.raises(NatsConnectError, match=r"nats://127\.0\.0\.1:\d+, nats://127\.0\.0\.1:\d+ ") as refused:
        await messaging.connect(",".join(down), "test-no-server", connect_timeout=0.5)
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out + captured.err + str(refused.value)
    with pytest.raises(NatsConnectError, match="no NATS server"):
        await messaging.connect(" , ", "test-empty-list")


async def test_a_server_without_jetstream_is_an_error_at_once_not_waited_for() -> None:
    """Services wait for a cluster's JetStream to become ready (test_nats_cluster); a server that has none fails
    the start with a message saying so, instead of the wait running out."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        str(find_nats_server_binary()),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        client = await messaging.connect(f"nats://127.0.0.1:{port}", "test-no-jetstream")  # retries until it is up
        try:
            with pytest.raises(NoJetStreamError, match="-js"):
                await messaging.ensure_all_when_ready(client.jetstream(), wait_s=60)
        finally:
            await client.close()
    finally:
        server.terminate()
        await server.wait()


# -- isolated servers ----------------------------------------------------------------------------------


async def test_ensure_streams_updates_drifted_config(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path) as server, asyncio.timeout(WAIT_S):
        client = await messaging.connect(server.url, "test-drift")
        try:
            js = client.jetstream()
            await js.add_stream(
                name=FIRES_STREAM,
                subjects=["kairos.fire.>"],
                storage=StorageType.FILE,
                duplicate_window=60,
                max_bytes=1 << 20,  # not managed by Kairos: must survive the update
            )
            await messaging.ensure_streams(js, duplicate_window_s=300)
            config = (await js.stream_info(FIRES_STREAM)).config
        finally:
            await client.close()
    assert config.duplicate_window == 300
    assert config.max_bytes == 1 << 20


async def test_embedded_server_serves_jetstream_and_kill_disconnects(tmp_path: Path) -> None:
    disconnected = asyncio.Event()
    reconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    async def on_reconnect() -> None:
        reconnected.set()

    async with EmbeddedNatsServer(tmp_path) as server, asyncio.timeout(WAIT_S):
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert server.running
        client = await messaging.connect(
            server.url,
            "test-kill",
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            reconnect_time_wait=0.1,
        )
        try:
            account = await client.jetstream().account_info()
            assert account.limits is not None

            server.kill()
            assert not server.running
            await disconnected.wait()
            assert not client.is_connected

            # Restarting brings the server back at the same url and the client reconnects by itself.
            await server.start()
            await reconnected.wait()
            assert client.is_connected
        finally:
            await client.close()
    assert not server.running
    assert (tmp_path / "nats-server.log").is_file()


async def test_data_persists_across_restart(tmp_path: Path) -> None:
    subject = fire_subject("ws", "trg")
    async with asyncio.timeout(WAIT_S):
        server = EmbeddedNatsServer(tmp_path)
        await server.start()
        try:
            client = await messaging.connect(server.url, "test-persist-1")
            try:
                js = client.jetstream()
                await messaging.ensure_streams(js)
                ack = await messaging.publish_fire(js, subject, b"survives", "fire-1")
            finally:
                await client.close()

            await server.stop()
            await server.start()

            client = await messaging.connect(server.url, "test-persist-2")
            try:
                js = client.jetstream()
                info = await js.stream_info(FIRES_STREAM)
                msg = await js.get_msg(FIRES_STREAM, ack.seq)
            finally:
                await client.close()
        finally:
            await server.stop()
    assert info.state.messages == 1
    assert msg.data == b"survives"
    assert msg.subject == subject


async def test_start_fails_clearly_when_the_port_is_taken(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path / "a") as first, asyncio.timeout(WAIT_S):
        second = EmbeddedNatsServer(tmp_path / "b", port=first.port)
        with pytest.raises(NatsServerError, match="address already in use"):
            await second.start()
        assert not second.running
