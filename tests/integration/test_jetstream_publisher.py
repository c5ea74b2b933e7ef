"""`kairos.core.jetstream.JetStreamPublisher` against a real nats-server (the session server).

Each test declares its own stream on unique subjects, so tests do not see each other's messages.
Tests that stand a silent subscriber in for a lost ack publish on the subscriber's own connection
(`own_connection=False`): nats-server may answer "no responders" to a publish from another connection that
follows a SUB by a few milliseconds, even after that SUB's PING/PONG. The publisher's own connection is put
through a lost ack by freezing a server of its own instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from kairos.core import messaging
from kairos.core.jetstream import (
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    EXPECTED_STREAM_HEADER,
    HeaderBlock,
    JetStreamPublisher,
    JetStreamPublishError,
    NoStreamError,
    PayloadTooLargeError,
    PubAck,
    PublisherClosedError,
    PublishTimeoutError,
    SubjectNotEmptyError,
    WindowFullError,
)
from kairos.core.natsserver import EmbeddedNatsServer

WAIT_S = 10.0
# Headers that would break the NATS protocol, and what the refusal says.
BREAKING_HEADERS = [
    ({"X-Bad": "line\r\nbreak"}, "line break"),
    ({"Bad Name": "x"}, "invalid NATS header name"),
    ({"": "x"}, "invalid NATS header name"),
    ({"Bad:Name": "x"}, "invalid NATS header name"),
]


@pytest.fixture
async def stream(nc: Client) -> AsyncIterator[tuple[str, str]]:
    """A fresh stream capturing `<prefix>.>`: yields (stream name, subject prefix)."""
    token = uuid.uuid4().hex[:12]
    name, prefix = f"PUBTEST_{token}", f"pubtest.{token}"
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], duplicate_window=60.0))
    try:
        yield name, prefix
    finally:
        await js.delete_stream(name)


@pytest.fixture
async def publisher(nc: Client) -> AsyncIterator[JetStreamPublisher]:
    publisher = JetStreamPublisher(nc, max_in_flight=64, timeout=2.0)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.close()


async def test_publish_is_acknowledged_with_stream_and_sequence(nc, stream, publisher) -> None:
    name, prefix = stream
    async with asyncio.timeout(WAIT_S):
        first = await publisher.publish(f"{prefix}.a", b"one", msg_id="a-1", stream=name)
        second = await publisher.publish(f"{prefix}.b", b"two", headers={"X-Kind": "test"})
    assert first == PubAck(stream=name, seq=1, duplicate=False)
    assert second == PubAck(stream=name, seq=2, duplicate=False)
    stored = await nc.jetstream().get_msg(name, 2)
    assert stored.data == b"two"
    assert stored.headers["X-Kind"] == "test"


async def test_same_msg_id_is_a_duplicate_and_stored_once(nc, stream, publisher) -> None:
    name, prefix = stream
    async with asyncio.timeout(WAIT_S):
        first = await publisher.publish(f"{prefix}.fire", b"x", msg_id="trigger@2026-01-01T00:00:00Z")
        again = await publisher.publish(f"{prefix}.fire", b"x", msg_id="trigger@2026-01-01T00:00:00Z")
    assert not first.duplicate
    assert again.duplicate and again.seq == first.seq
    assert (await nc.jetstream().stream_info(name)).state.messages == 1


async def test_many_in_flight_beyond_the_window_all_acknowledged_in_order(nc, stream, publisher) -> None:
    name, prefix = stream
    count = 1000  # well past the window of 64: submit waits for free slots
    async with asyncio.timeout(WAIT_S):
        futures = [await publisher.submit(f"{prefix}.n", str(i).encode(), msg_id=f"n-{i}") for i in range(count)]
        acks = await asyncio.gather(*futures)
    assert [ack.seq for ack in acks] == list(range(1, count + 1))
    assert publisher.in_flight == 0
    assert (await nc.jetstream().stream_info(name)).state.messages == count


async def test_subject_no_stream_captures_fails_with_no_stream(publisher) -> None:
    subject = f"pubtest.nostream.{uuid.uuid4().hex[:12]}"
    async with asyncio.timeout(WAIT_S):
        with pytest.raises(NoStreamError, match="no stream captures"):
            await publisher.publish(subject, b"x")


async def test_a_subject_expected_empty_takes_one_message(nc, stream, publisher) -> None:
    name, prefix = stream
    first_only = {EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: "0"}
    async with asyncio.timeout(WAIT_S):
        ack = await publisher.publish(f"{prefix}.once", b"first", headers=first_only)
        with pytest.raises(SubjectNotEmptyError) as raised:
            await publisher.publish(f"{prefix}.once", b"second", headers=first_only)
    assert raised.value.err_code == 10071
    assert (await nc.jetstream().get_last_msg(name, f"{prefix}.once")).seq == ack.seq


async def test_wrong_expected_stream_is_refused_with_the_jetstream_error(stream, publisher) -> None:
    _, prefix = stream
    async with asyncio.timeout(WAIT_S):
        with pytest.raises(JetStreamPublishError) as raised:
            await publisher.publish(f"{prefix}.x", b"x", stream="NOT_THIS_STREAM")
    assert raised.value.code == 400
    assert "stream" in raised.value.description.lower()


async def test_times_out_after_every_attempt_when_nobody_acks(nc) -> None:
    """A subscriber that is not a stream takes the message and never answers: each attempt expires."""
    subject = f"pubtest.silent.{uuid.uuid4().hex[:12]}"
    received: list[str] = []
    third = asyncio.Event()

    async def silent(message) -> None:
        received.append(message.headers["Nats-Msg-Id"])
        if len(received) == 3:
            third.set()

    listener = await nc.subscribe(subject, cb=silent)
    publisher = JetStreamPublisher(nc, timeout=0.2, attempts=3, own_connection=False)
    await publisher.start()
    try:
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(PublishTimeoutError, match=r"no ack within 0\.2 s"):
                await publisher.publish(subject, b"x", msg_id="retry-me")
            await third.wait()
    finally:
        await publisher.close()
        await listener.unsubscribe()
    assert received == ["retry-me"] * 3  # every attempt carries the same Msg-Id, so a retry is de-duplicated
    assert publisher.in_flight == 0


class _LosesFirstAck(JetStreamPublisher):
    """Drops the first reply it receives, as if the ack were lost on the way back."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lost: list[bytes] = []

    def _on_reply(self, reply: bytes, data: bytes, no_responders: bool) -> None:
        if not self.lost:
            self.lost.append(data)
            return
        super()._on_reply(reply, data, no_responders)


async def test_retry_after_a_lost_ack_is_stored_once(nc, stream) -> None:
    name, prefix = stream
    publisher = _LosesFirstAck(nc, timeout=0.3, attempts=2)
    await publisher.start()
    try:
        async with asyncio.timeout(WAIT_S):
            ack = await publisher.publish(f"{prefix}.once", b"x", msg_id="once-1")
    finally:
        await publisher.close()
    assert len(publisher.lost) == 1
    assert ack.duplicate and ack.seq == 1
    assert (await nc.jetstream().stream_info(name)).state.messages == 1


async def test_a_frozen_server_times_publishes_out_on_the_own_connection(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path / "nats") as server, asyncio.timeout(WAIT_S):
        client = await messaging.connect(server.url, "test-publisher-frozen")
        publisher = JetStreamPublisher(client, timeout=0.2, attempts=2)
        try:
            await publisher.start()
            assert publisher.uses_own_connection
            os.kill(server.pid, signal.SIGSTOP)
            try:
                with pytest.raises(PublishTimeoutError, match=r"no ack within 0\.2 s"):
                    await publisher.publish("frozen.a", b"x", msg_id="frozen")
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert publisher.in_flight == 0
        finally:
            await publisher.close()
            await client.close()


async def test_close_fails_publishes_still_waiting(nc) -> None:
    subject = f"pubtest.closing.{uuid.uuid4().hex[:12]}"
    listener = await nc.subscribe(subject, cb=_ignore)
    publisher = JetStreamPublisher(nc, timeout=30.0, own_connection=False)
    await publisher.start()
    try:
        pending = await publisher.submit(subject, b"x")
        assert publisher.in_flight == 1
        await publisher.close()
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(PublisherClosedError):
                await pending
    finally:
        await listener.unsubscribe()


async def test_a_full_window_holds_further_publishes_back(nc) -> None:
    subject = f"pubtest.window.{uuid.uuid4().hex[:12]}"
    received: list[bytes] = []

    async def silent(message) -> None:
        received.append(message.data)

    listener = await nc.subscribe(subject, cb=silent)
    publisher = JetStreamPublisher(nc, max_in_flight=2, timeout=30.0, own_connection=False)
    await publisher.start()
    try:
        first = [await publisher.submit(subject, str(i).encode()) for i in range(2)]
        third = asyncio.create_task(publisher.submit(subject, b"2"))
        async with asyncio.timeout(WAIT_S):
            await nc.flush()  # a round trip: the third publish, had it been sent, arrives before the PONG
            while len(received) < 2:
                await nc.flush()
        assert not third.done() and received == [b"0", b"1"] and publisher.in_flight == 2
        await publisher.close()
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(PublisherClosedError):
                await third
            for pending in first:
                with pytest.raises(PublisherClosedError):
                    await pending
    finally:
        await publisher.close()
        await listener.unsubscribe()


async def test_publish_before_start_is_an_error(nc) -> None:
    with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
        await JetStreamPublisher(nc).publish("pubtest.x", b"x")


@pytest.mark.parametrize(
    ("subject", "headers", "problem"),
    [
        ("bad subject", None, "invalid NATS subject"),
        ("", None, "invalid NATS subject"),
        (" pubtest.lead", None, "invalid NATS subject"),
        ("pubtest.trail\t", None, "invalid NATS subject"),
        ("pubtest.no\u00a0break", None, "invalid NATS subject"),
        *(("pubtest.ok", headers, problem) for headers, problem in BREAKING_HEADERS),
    ],
)
async def test_what_would_break_the_protocol_is_refused(publisher, subject, headers, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        await publisher.submit(subject, b"x", headers=headers)
    assert publisher.in_flight == 0


async def test_payload_over_the_server_limit_is_refused(nc, publisher) -> None:
    with pytest.raises(PayloadTooLargeError, match="exceeds"):
        await publisher.submit("pubtest.big", b"x" * (nc.max_payload + 1))


async def _ignore(message) -> None:
    """A subscriber that never answers."""


class _Silent:
    """A plain subscriber on a subject: takes every message (so no "no responders") and never answers."""

    def __init__(self) -> None:
        self.msg_ids: list[str] = []
        self.changed = asyncio.Event()

    async def receive(self, message) -> None:
        self.msg_ids.append(message.headers["Nats-Msg-Id"] if message.headers else message.data.decode())
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.msg_ids) < count:
            self.changed.clear()
            await self.changed.wait()


async def test_one_sweep_retries_and_times_out_publishes_sent_at_different_times(nc) -> None:
    subject = f"pubtest.sweep.{uuid.uuid4().hex[:12]}"
    silent = _Silent()
    listener = await nc.subscribe(subject, cb=silent.receive)
    publisher = JetStreamPublisher(nc, timeout=0.2, attempts=3, own_connection=False)
    await publisher.start()
    try:
        async with asyncio.timeout(WAIT_S):
            first = publisher.submit_nowait(subject, b"x", msg_id="first")
            await silent.wait_for(2)  # the first publish was sent again: now the second is the oldest but one
            second = publisher.submit_nowait(subject, b"x", msg_id="second")
            for pending in (first, second):
                with pytest.raises(PublishTimeoutError, match=r"no ack within 0\.2 s"):
                    await pending
            await silent.wait_for(6)
    finally:
        await publisher.close()
        await listener.unsubscribe()
    assert sorted(silent.msg_ids) == ["first"] * 3 + ["second"] * 3
    assert publisher.in_flight == 0


async def test_acknowledged_publishes_are_not_timed_out_by_the_sweep(nc, stream) -> None:
    name, prefix = stream
    publisher = JetStreamPublisher(nc, timeout=0.3, attempts=1, own_connection=False)
    await publisher.start()
    try:
        async with asyncio.timeout(WAIT_S):
            for round_ in range(3):  # each round outlives the previous round's deadlines
                acks = await asyncio.gather(
                    *(publisher.submit_nowait(f"{prefix}.s", b"x", msg_id=f"{round_}-{i}") for i in range(50))
                )
                assert all(not ack.duplicate for ack in acks)
                silent_subject = f"pubtest.sweep.{uuid.uuid4().hex[:12]}"
                listener = await nc.subscribe(silent_subject, cb=_ignore)
                with pytest.raises(PublishTimeoutError):
                    await publisher.publish(silent_subject, b"x")
                await listener.unsubscribe()
    finally:
        await publisher.close()
    assert (await nc.jetstream().stream_info(name)).state.messages == 150


async def test_a_per_call_timeout_overrides_the_default(nc) -> None:
    subject = f"pubtest.override.{uuid.uuid4().hex[:12]}"
    silent = _Silent()
    listener = await nc.subscribe(subject, cb=silent.receive)
    publisher = JetStreamPublisher(nc, timeout=60.0, attempts=3, own_connection=False)
    await publisher.start()
    try:
        async with asyncio.timeout(WAIT_S):  # far shorter than one default attempt
            with pytest.raises(PublishTimeoutError, match=r"no ack within 0\.2 s"):
                await publisher.publish(subject, b"x", msg_id="short", timeout=0.2, attempts=2)
            await silent.wait_for(2)
    finally:
        await publisher.close()
        await listener.unsubscribe()
    assert silent.msg_ids == ["short", "short"]


async def test_a_longer_per_call_timeout_does_not_hold_back_the_default_ones(nc) -> None:
    subject = f"pubtest.override.{uuid.uuid4().hex[:12]}"
    listener = await nc.subscribe(subject, cb=_ignore)
    publisher = JetStreamPublisher(nc, timeout=0.2, attempts=2, own_connection=False)
    await publisher.start()
    try:
        patient = publisher.submit_nowait(subject, b"x", timeout=60.0)  # the oldest publish, with a late deadline
        async with asyncio.timeout(WAIT_S):
            for pending in [publisher.submit_nowait(subject, b"x") for _ in range(3)]:
                with pytest.raises(PublishTimeoutError, match=r"no ack within 0\.2 s"):
                    await pending
        assert not patient.done() and publisher.in_flight == 1
        await publisher.close()
        with pytest.raises(PublisherClosedError):
            await patient
    finally:
        await publisher.close()
        await listener.unsubscribe()


async def test_a_header_block_is_sent_as_encoded(nc, stream, publisher) -> None:
    name, prefix = stream
    block = HeaderBlock({"X-Kind": "block", EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: "0"})
    async with asyncio.timeout(WAIT_S):
        first = await publisher.publish(f"{prefix}.block", b"one", headers=block)
        with pytest.raises(SubjectNotEmptyError):
            await publisher.publish(f"{prefix}.block", b"two", headers=block)
        with_id = await publisher.submit_nowait(f"{prefix}.other", b"three", headers=block, msg_id="b-3", stream=name)
    stored = await nc.jetstream().get_msg(name, first.seq)
    assert stored.data == b"one" and stored.headers["X-Kind"] == "block"
    stored = await nc.jetstream().get_msg(name, with_id.seq)
    assert stored.headers["X-Kind"] == "block" and stored.headers["Nats-Msg-Id"] == "b-3"
    assert stored.headers[EXPECTED_STREAM_HEADER] == name


@pytest.mark.parametrize(("headers", "problem"), BREAKING_HEADERS)
def test_a_header_block_that_would_break_the_protocol_is_refused_when_encoded(headers, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        HeaderBlock(headers)


async def test_a_header_block_cannot_be_given_its_msg_id_twice(publisher) -> None:
    block = HeaderBlock({"Nats-Msg-Id": "in-block"})
    with pytest.raises(ValueError, match="repeats a header"):
        publisher.submit_nowait("pubtest.twice", b"x", headers=block, msg_id="again")
    with pytest.raises(ValueError, match="line break"):
        publisher.submit_nowait("pubtest.twice", b"x", msg_id="a\r\nb")
    assert publisher.in_flight == 0


async def test_submit_nowait_with_a_full_window_sends_nothing_and_says_so(nc) -> None:
    subject = f"pubtest.window.{uuid.uuid4().hex[:12]}"
    silent = _Silent()
    listener = await nc.subscribe(subject, cb=silent.receive)
    publisher = JetStreamPublisher(nc, max_in_flight=2, timeout=30.0, own_connection=False)
    await publisher.start()
    try:
        sent = [publisher.submit_nowait(subject, str(i).encode()) for i in range(2)]
        with pytest.raises(WindowFullError):
            publisher.submit_nowait(subject, b"2")
        async with asyncio.timeout(WAIT_S):
            await silent.wait_for(2)
            await nc.flush()  # a round trip: the third publish, had it been sent, arrives before the PONG
        assert silent.msg_ids == ["0", "1"] and publisher.in_flight == 2
        await publisher.close()
        for pending in sent:
            with pytest.raises(PublisherClosedError):
                await pending
    finally:
        await publisher.close()
        await listener.unsubscribe()


async def test_submit_nowait_before_start_is_an_error(nc) -> None:
    with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
        JetStreamPublisher(nc).submit_nowait("pubtest.x", b"x")


class _CountsQueuedAcks(JetStreamPublisher):
    """Counts the acks that reach it through nats-py's subscription (queue and task)."""

    queued = 0

    async def _on_reply_message(self, message) -> None:
        self.queued += 1
        await super()._on_reply_message(message)


async def test_publishes_and_acks_go_over_the_publishers_own_connection(nc, stream) -> None:
    _, prefix = stream
    publisher = _CountsQueuedAcks(nc)
    await publisher.start()
    received_before = nc.stats["in_msgs"]
    try:
        assert publisher.uses_own_connection and publisher.is_connected
        async with asyncio.timeout(WAIT_S):
            acks = await asyncio.gather(*(publisher.submit_nowait(f"{prefix}.r", b"x") for _ in range(20)))
    finally:
        await publisher.close()
    assert [ack.seq for ack in acks] == list(range(1, 21))
    assert publisher.queued == 0 and nc.stats["in_msgs"] == received_before


async def test_a_closed_publisher_leaves_the_next_one_on_the_connection_working(nc, stream) -> None:
    _, prefix = stream
    first = JetStreamPublisher(nc)
    await first.start()
    async with asyncio.timeout(WAIT_S):
        assert (await first.publish(f"{prefix}.a", b"x")).seq == 1
        await first.close()
        second = JetStreamPublisher(nc)
        await second.start()
        try:
            assert (await second.publish(f"{prefix}.a", b"y")).seq == 2
        finally:
            await second.close()


async def test_a_publisher_can_share_the_connection(nc, stream) -> None:
    _, prefix = stream
    publisher = _CountsQueuedAcks(nc, own_connection=False)
    await publisher.start()
    try:
        assert not publisher.uses_own_connection
        async with asyncio.timeout(WAIT_S):
            ack = await publisher.publish(f"{prefix}.fallback", b"x")
            with pytest.raises(NoStreamError):
                await publisher.publish(f"pubtest.nostream.{uuid.uuid4().hex[:12]}", b"x")
    finally:
        await publisher.close()
    assert ack.seq == 1 and publisher.queued == 2


async def test_a_publisher_falls_back_to_the_shared_connection_when_its_own_cannot_log_in(tmp_path: Path) -> None:
    """Credentials nats-py was given as options (not in the URL) are not the wire's to reuse: it shares `nc`."""
    users = 'authorization { users = [ { user: "kairos", password: "secret" } ] }'
    async with EmbeddedNatsServer(tmp_path / "nats", extra_config=users) as server, asyncio.timeout(WAIT_S):
        client = await messaging.connect(server.url, "test-publisher-fallback", user="kairos", password="secret")
        try:
            await client.jetstream().add_stream(StreamConfig(name="FALLBACK", subjects=["fallback.>"]))
            shared = JetStreamPublisher(client)
            await shared.start()
            assert not shared.uses_own_connection
            assert (await shared.publish("fallback.a", b"x")).seq == 1
            await shared.close()
        finally:
            await client.close()
        in_url = await messaging.connect(f"nats://kairos:secret@{server.host}:{server.port}", "test-publisher-own")
        try:
            own = JetStreamPublisher(in_url)
            await own.start()
            assert own.uses_own_connection
            assert (await own.publish("fallback.a", b"y")).seq == 2
            await own.close()
        finally:
            await in_url.close()


@pytest.mark.parametrize("own_connection", [True, False])
async def test_acks_still_arrive_after_the_nats_server_restarts(tmp_path: Path, own_connection: bool) -> None:
    connected = asyncio.Queue()
    async with asyncio.timeout(WAIT_S * 3):
        server = EmbeddedNatsServer(tmp_path / "nats")
        await server.start()
        try:
            client = await messaging.connect(
                server.url, "test-publisher-restart", on_connection_change=connected.put_nowait, reconnect_time_wait=0.1
            )
            publisher = JetStreamPublisher(client, timeout=2.0, attempts=5, own_connection=own_connection)
            try:
                await client.jetstream().add_stream(StreamConfig(name="RESTART", subjects=["restart.>"]))
                await publisher.start()
                assert publisher.uses_own_connection is own_connection
                assert (await publisher.publish("restart.a", b"before", msg_id="before")).seq == 1

                server.kill()
                assert await connected.get() is False
                during = publisher.submit_nowait("restart.a", b"during", msg_id="during")
                await server.start()
                assert await connected.get() is True
                if own_connection:  # the own connection refuses a publish while down, so the sender knows at once
                    with pytest.raises(JetStreamPublishError, match="cannot send"):
                        await during
                    await publisher.wait_connected()
                    assert (await publisher.publish("restart.a", b"again", msg_id="during")).seq == 2
                else:  # nats-py buffers it and sends it once reconnected
                    assert (await during).seq == 2
                assert (await publisher.publish("restart.a", b"after", msg_id="after")).seq == 3
            finally:
                await publisher.close()
                await client.close()
        finally:
            await server.stop()


async def test_the_own_connection_follows_nc_to_another_server(tmp_path: Path) -> None:
    """When the server `nc` is on dies and `nc` fails over to another one, the publisher's own connection
    reconnects to that other server, not only ever to the one it first dialled."""
    connected = asyncio.Queue()
    async with (
        EmbeddedNatsServer(tmp_path / "a") as first,
        EmbeddedNatsServer(tmp_path / "b") as second,
        asyncio.timeout(WAIT_S * 3),
    ):
        client = await messaging.connect(
            first.url,
            "test-publisher-failover",
            servers=[first.url, second.url],
            dont_randomize=True,
            reconnect_time_wait=0.1,
            on_connection_change=connected.put_nowait,
        )
        publisher = JetStreamPublisher(client, timeout=2.0)
        try:
            await client.jetstream().add_stream(StreamConfig(name="FOLLOW", subjects=["follow.>"]))
            await publisher.start()
            assert publisher.uses_own_connection
            assert (await publisher.publish("follow.a", b"on the first", msg_id="first")).seq == 1

            first.kill()
            assert await connected.get() is False
            assert await connected.get() is True
            assert client.connected_url.port == second.port
            # Each server has a JetStream of its own: the second holds nothing until the publisher reaches it.
            await client.jetstream().add_stream(StreamConfig(name="FOLLOW", subjects=["follow.>"]))
            await publisher.wait_connected()
            ack = await publisher.publish("follow.a", b"on the second", msg_id="second")
            info = await client.jetstream().stream_info("FOLLOW")
        finally:
            await publisher.close()
            await client.close()
    assert (ack.stream, ack.seq) == ("FOLLOW", 1)
    assert info.state.messages == 1


async def test_a_publish_on_a_closed_shared_connection_fails_at_once(nats_url) -> None:
    client = await messaging.connect(nats_url, "test-publisher-closed-connection")
    publisher = JetStreamPublisher(client, timeout=60.0, own_connection=False)
    await publisher.start()
    await client.close()
    try:
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(JetStreamPublishError, match="connection is closed"):
                await publisher.submit_nowait("pubtest.closed", b"x")
        assert publisher.in_flight == 0
    finally:
        await publisher.close()
