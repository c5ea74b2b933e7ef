"""`kairos.core.jetstream.JetStreamPublisher` against a real nats-server (the session server).

Each test declares its own stream on unique subjects, so tests do not see each other's messages.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from kairos.core.jetstream import (
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    JetStreamPublisher,
    JetStreamPublishError,
    NoStreamError,
    PayloadTooLargeError,
    PubAck,
    PublisherClosedError,
    PublishTimeoutError,
    SubjectNotEmptyError,
)

WAIT_S = 10.0


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
    publisher = JetStreamPublisher(nc, timeout=0.2, attempts=3)
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

    async def _on_reply(self, message) -> None:
        if not self.lost:
            self.lost.append(message.data)
            return
        await super()._on_reply(message)


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


async def test_close_fails_publishes_still_waiting(nc) -> None:
    subject = f"pubtest.closing.{uuid.uuid4().hex[:12]}"
    listener = await nc.subscribe(subject, cb=_ignore)
    publisher = JetStreamPublisher(nc, timeout=30.0)
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
    publisher = JetStreamPublisher(nc, max_in_flight=2, timeout=30.0)
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
        ("pubtest.ok", {"X-Bad": "line\r\nbreak"}, "line break"),
        ("pubtest.ok", {"Bad Name": "x"}, "invalid NATS header name"),
        ("pubtest.ok", {"": "x"}, "invalid NATS header name"),
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
