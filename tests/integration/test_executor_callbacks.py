"""Signed HTTP traffic from the executor, against a real Starlette app under uvicorn on a free port that
verifies every request with the `standardwebhooks` library: the http runner's envelope (webhook-id =
run/attempt), notify_url callbacks of the lifecycle events (retried on 5xx, stopped on 410, and delivered
after a restart when the executor process was SIGKILLed with one in flight), and the per-workspace
concurrency limit holding a run back until another one ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio
import uvicorn
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from test_executor_policies import TEST_AGENTS, TIMEOUT_S, WORKSPACE, Executor, connect_executor, fast_retry

from kairos.client import webhook_trigger
from kairos.core import messaging
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.devtools.processes import ServiceProcesses
from kairos.devtools.suite import running_suite, traces_of
from kairos.executor.runners import MAX_ANSWER_BYTES
from kairos.v1 import fire_pb2, run_pb2, run_service_pb2, trigger_pb2, trigger_service_pb2

ENDLESS_CAP = 64 << 20
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
Status = run_pb2.RunStatus
NOOP = "kairos.testing_agents:noop"


@dataclass
class Peer:
    """What the local HTTP peer received; every request was verified before being recorded."""

    url: str
    agent_calls: list[tuple[dict, dict]] = field(default_factory=list)
    notifications: list[tuple[str, dict]] = field(default_factory=list)
    gone_calls: list[dict] = field(default_factory=list)
    held_calls: list[tuple[str, dict, bool]] = field(default_factory=list)  # (webhook-id, event, answered 2xx)
    release_held: asyncio.Event = field(default_factory=asyncio.Event)
    failures_left: int = 1
    agent_failures_left: int = 1
    flaky_calls: list[dict] = field(default_factory=list)
    endless_calls: list[str] = field(default_factory=list)  # event types, in the order they arrived
    endless_sent: list[int] = field(default_factory=list)  # bytes of each answer sent before the caller hung up
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, predicate) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def peer_app(peer: Peer) -> Starlette:
    verifier = Webhook(SECRET)

    async def verified(request: Request) -> dict:
        body = (await request.body()).decode()
        return verifier.verify(body, dict(request.headers))

    async def agent(request: Request) -> Response:
        envelope = await verified(request)
        peer.agent_calls.append((envelope, dict(request.headers)))
        peer.changed.set()
        return JSONResponse({"answer": 42, "attempt": envelope["attempt"]})

    async def notify(request: Request) -> Response:
        event = await verified(request)
        peer.notifications.append((request.headers["webhook-id"], event))
        peer.changed.set()
        if peer.failures_left > 0:
            peer.failures_left -= 1
            return Response(status_code=503)
        return Response(status_code=204)

    async def flaky_agent(request: Request) -> Response:
        peer.flaky_calls.append(await verified(request))
        if peer.agent_failures_left > 0:
            peer.agent_failures_left -= 1
            return Response(status_code=503)
        return JSONResponse({"ok": True})

    async def endless_notify(request: Request) -> Response:
        """Answers 200 with a body that goes on until the caller hangs up (or, so that a caller reading it all
        fails the test rather than the machine, ENDLESS_CAP bytes)."""
        peer.endless_calls.append((await verified(request))["type"])

        async def without_end():
            sent = 0
            while sent < ENDLESS_CAP and not await request.is_disconnected():
                yield b"x" * 65536
                sent += 65536
                await asyncio.sleep(0)  # the peer shares the test's event loop
            peer.endless_sent.append(sent)
            peer.changed.set()

        return StreamingResponse(without_end(), status_code=200)

    async def oversized_agent(request: Request) -> Response:
        await verified(request)
        return Response(b'{"pad": "%s"}' % (b"x" * 2 * MAX_ANSWER_BYTES), media_type="application/json")

    async def refusing_agent(request: Request) -> Response:
        await verified(request)
        return JSONResponse({"error": "bad_input"}, status_code=422)

    async def held_notify(request: Request) -> Response:
        event = await verified(request)
        released = peer.release_held.is_set()
        peer.held_calls.append((request.headers["webhook-id"], event, released))
        peer.changed.set()
        await peer.release_held.wait()
        return Response(status_code=204)

    async def gone(request: Request) -> Response:
        peer.gone_calls.append(await verified(request))
        peer.changed.set()
        return Response(status_code=410)

    return Starlette(
        routes=[
            Route("/agent", agent, methods=["POST"]),
            Route("/notify", notify, methods=["POST"]),
            Route("/gone", gone, methods=["POST"]),
            Route("/held-notify", held_notify, methods=["POST"]),
            Route("/flaky-agent", flaky_agent, methods=["POST"]),
            Route("/refusing-agent", refusing_agent, methods=["POST"]),
            Route("/oversized-agent", oversized_agent, methods=["POST"]),
            Route("/endless-notify", endless_notify, methods=["POST"]),
        ]
    )


@pytest_asyncio.fixture
async def peer() -> AsyncIterator[Peer]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    result = Peer(f"http://127.0.0.1:{listener.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(peer_app(result), log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield result
    finally:
        result.release_held.set()
        server.should_exit = True
        await task
        listener.close()


@pytest_asyncio.fixture
async def executor(tmp_path: Path, database_url: str) -> AsyncIterator[Executor]:
    env = {
        "KAIROS_PYTHON_RUNNER_MODULES": TEST_AGENTS,
        "KAIROS_NOTIFY_SIGNING_SECRET": SECRET,
        "KAIROS_WORKSPACE_MAX_CONCURRENT_RUNS": "1",
    }
    async with connect_executor(tmp_path, database_url, env) as running:
        yield running


async def test_http_runner_and_notify_url_are_signed_retried_on_5xx_and_stopped_on_410(
    executor: Executor, peer: Peer
) -> None:
    policies = trigger_pb2.Policies(notify_url=f"{peer.url}/notify")
    fire_id = await executor.fire("signed", "", policies=policies, http_url=f"{peer.url}/agent")
    ended = await executor.ended(fire_id)
    assert ended.type == "run.completed"
    run = (await executor.client.runs.GetRun(run_service_pb2.GetRunRequest(name=ended.run))).run
    assert run.output.struct_value["answer"] == 42

    [(envelope, headers)] = peer.agent_calls
    assert (envelope["run"], envelope["fire_id"], envelope["attempt"]) == (ended.run, fire_id, 1)
    assert headers["webhook-id"] == f"{ended.run}/1"

    expected = ["trigger.fired", "run.started", "run.completed"]
    await peer.wait(lambda: len(peer.notifications) == len(expected) + 1)
    refused_id, refused = peer.notifications[0]
    assert refused["type"] == "trigger.fired"
    delivered = peer.notifications[1:]
    assert [webhook_id for webhook_id, _ in delivered].count(refused_id) == 1, "answered 503, retried once"
    assert sorted(event["type"] for _, event in delivered) == sorted(expected)
    in_order = [event["type"] for _, event in delivered if event["type"] != "trigger.fired"]
    assert in_order == ["run.started", "run.completed"], "one URL's callbacks go in order"
    assert {(event["fire_id"], event["source"]) for _, event in delivered} == {(fire_id, "AUTOMATION")}
    assert {event["run"] for _, event in delivered if event["type"] != "trigger.fired"} == {ended.run}

    gone = trigger_pb2.Policies(notify_url=f"{peer.url}/gone")
    for _ in range(2):
        fire_id = await executor.fire("gone", "kairos.testing_agents:noop", policies=gone)
        assert (await executor.ended(fire_id)).type == "run.completed"
    # Another trigger's callback to the same URL goes after every earlier one to that URL: once it arrived,
    # the first trigger's callbacks after its 410 were all seen, and dropped.
    sentinel = await executor.fire("gone-too", "kairos.testing_agents:noop", policies=gone)
    await peer.wait(lambda: any(event["fire_id"] == sentinel for event in peer.gone_calls))
    first_trigger = [event["type"] for event in peer.gone_calls if event["fire_id"] != sentinel]
    assert first_trigger == ["trigger.fired"]


async def test_http_agent_5xx_is_retried_and_4xx_fails_at_once_into_the_dead_letters(
    executor: Executor, peer: Peer
) -> None:
    retry = trigger_pb2.Policies(retry=fast_retry(3))
    flaky = await executor.fire("flaky-http", "", policies=retry, http_url=f"{peer.url}/flaky-agent")
    ended = await executor.ended(flaky)
    assert (ended.type, ended.attempt) == ("run.completed", 2)
    assert [call["attempt"] for call in peer.flaky_calls] == [1, 2]

    refused = await executor.fire("refused-http", "", policies=retry, http_url=f"{peer.url}/refusing-agent")
    failed = await executor.ended(refused)
    assert (failed.type, failed.attempt) == ("run.failed", 1)
    assert "422" in failed.error_message
    js = executor.suite.runtime.js
    dead = await js.get_last_msg(
        messaging.DEAD_LETTERS_STREAM, messaging.dead_letter_subject(WORKSPACE, "refused-http")
    )
    assert dead.headers["Kairos-Attempts"] == "1"


async def test_an_http_agent_answering_over_the_limit_fails_the_run(executor: Executor, peer: Peer) -> None:
    """The agent's URL is the workspace's to choose; its answer must not take the memory all runs share."""
    oversized = await executor.fire("oversized-http", "", http_url=f"{peer.url}/oversized-agent")
    failed = await executor.ended(oversized)
    assert (failed.type, failed.attempt) == ("run.failed", 1)
    assert f"agent answered with more than {MAX_ANSWER_BYTES} bytes" in failed.error_message


async def test_a_callback_is_done_once_answered_however_long_the_answers_body(executor: Executor, peer: Peer) -> None:
    """The receiver's URL is the workspace's to choose: a body without end must neither hold the URL's later
    callbacks (they go in order, one at a time) nor fill the executor's memory. Only the status is read."""
    policies = trigger_pb2.Policies(notify_url=f"{peer.url}/endless-notify")
    fire_id = await executor.fire("endless-notify", "kairos.testing_agents:noop", policies=policies)
    assert (await executor.ended(fire_id)).type == "run.completed"
    await peer.wait(lambda: len(peer.endless_sent) == 3)
    assert sorted(peer.endless_calls) == ["run.completed", "run.started", "trigger.fired"]
    # what the executor left unread stayed in the sockets' buffers: far less than the whole answer
    assert max(peer.endless_sent) < ENDLESS_CAP // 2, peer.endless_sent


async def test_workspace_concurrency_limit_holds_a_run_until_another_ends(executor: Executor) -> None:
    held = executor.holding()
    await held.start()
    agent = "kairos.testing_agents:wait_for_release"
    first = await executor.fire("one", agent, run_input=held.input)
    await held.next_ready()
    second = await executor.fire("two", agent, run_input=held.input)
    queued = await executor.wait_event(lambda e: e.fire_id == second and e.type == "run.queued")
    assert queued.status == Status.RUN_STATUS_PENDING
    await held.release()
    assert (await executor.ended(first)).type == "run.completed"
    assert json.dumps(await held.next_ready())
    await held.release()
    assert (await executor.ended(second)).type == "run.completed"


async def test_a_callback_in_flight_when_the_executor_is_killed_is_delivered_after_a_restart(
    tmp_path: Path, peer: Peer
) -> None:
    async with EmbeddedNatsServer(tmp_path / "nats") as nats_server:
        env = {
            "KAIROS_NATS_URL": nats_server.url,
            "KAIROS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'executor.db'}",
            "KAIROS_PYTHON_RUNNER_MODULES": TEST_AGENTS,
            "KAIROS_NOTIFY_SIGNING_SECRET": SECRET,
            "KAIROS_EXECUTOR_ACK_WAIT_S": "2",
        }
        async with ServiceProcesses(tmp_path / "logs", env) as launched:
            executor = await launched.launch("executor")
            nc = await messaging.connect(nats_server.url, "test-callbacks-crash")
            try:
                request = fire_pb2.FireRequest(
                    fire_id="notified-1",
                    trigger=f"workspaces/{WORKSPACE}/triggers/notified",
                    trigger_type=run_pb2.TriggerType.TRIGGER_TYPE_WEBHOOK,
                    action=trigger_pb2.Action(
                        agent="agents/test",
                        runner=trigger_pb2.Runner(python=trigger_pb2.PythonRunner(entry_point=NOOP)),
                    ),
                    policies=trigger_pb2.Policies(notify_url=f"{peer.url}/held-notify"),
                )
                subject = messaging.fire_subject(WORKSPACE, "notified")
                await messaging.publish_fire(nc.jetstream(), subject, request.SerializeToString(), "notified-1")
                await peer.wait(lambda: peer.held_calls)
            finally:
                await nc.close()
            await executor.kill()
            [(in_flight_id, in_flight, answered)] = peer.held_calls
            assert (in_flight["type"], answered) == ("trigger.fired", False)

            peer.release_held.set()
            await executor.start()
            expected = {"trigger.fired", "run.started", "run.completed"}
            await peer.wait(lambda: {event["type"] for _, event, ok in peer.held_calls if ok} == expected)
            delivered = [webhook_id for webhook_id, _, ok in peer.held_calls if ok]
            assert in_flight_id in delivered, "the callback in flight at the kill is delivered after the restart"
            assert {event["fire_id"] for _, event, _ in peer.held_calls} == {"notified-1"}


async def test_cancel_run_sends_run_cancelled_to_the_triggers_notify_url(tmp_path: Path, peer: Peer) -> None:
    """CancelRun has no fire snapshot at hand: its run.cancelled goes to the notify_url the trigger has now."""
    peer.failures_left = 0
    env = {"KAIROS_PYTHON_RUNNER_MODULES": TEST_AGENTS, "KAIROS_NOTIFY_SIGNING_SECRET": SECRET}
    async with running_suite(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'kairos.db'}", env=env) as suite:
        api_key = await suite.new_workspace("cancels")
        async with suite.client(api_key) as kairos, traces_of(suite, "cancels") as traces:
            trigger = webhook_trigger(
                entry_point="kairos.testing_agents:wait_for_release",
                input_template={
                    "nats_url": suite.nats_url,
                    "release_subject": "test.cancel.release",
                    "ready_subject": "test.cancel.ready",
                },
            )
            trigger.policies.notify_url = f"{peer.url}/notify"
            created = await kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=trigger))
            name = created.trigger.name
            await kairos.triggers.FireTrigger(trigger_service_pb2.FireTriggerRequest(name=name))
            started = await traces.wait_for(lambda event: event.type == "run.started" and event.trigger == name)
            await kairos.runs.CancelRun(run_service_pb2.CancelRunRequest(name=started.run))

            await peer.wait(lambda: any(event["type"] == "run.cancelled" for _, event in peer.notifications))
            [cancelled] = [event for _, event in peer.notifications if event["type"] == "run.cancelled"]
            assert (cancelled["run"], cancelled["fire_id"]) == (started.run, started.fire_id)
