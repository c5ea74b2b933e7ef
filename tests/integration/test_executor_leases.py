"""Lease renewal against a real nats-server and real databases (SQLite and PostgreSQL), the executor in-process:
a renewal that names an attempt which has ended since must not stop the run's next attempt.

The heartbeat renews the leases it saw when it started; when the renewal's answer comes back, attempt N may
have failed and attempt N+1 of the same run started here with a new lease token. The renewal then reports
the run lost (attempt N's token is stale), and only an executor that checks the token tells that this is not
a takeover. The test holds one renewal (the real one, on the real database) until attempt N+1 runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from test_executor_policies import TEST_AGENTS, TIMEOUT_S, Executor, connect_executor, fast_retry

from kairos.executor.runs import RunStore
from kairos.v1 import trigger_pb2

END_EVENTS = ("run.completed", "run.failed", "run.cancelled", "run.skipped")


class HeldRenewal:
    """Replaces a RunStore's `renew_leases` so the next renewal waits for `release` before it goes to the
    database; later renewals go straight through."""

    def __init__(self, store: RunStore) -> None:
        self._renew = store.renew_leases
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.done = asyncio.Event()
        self.leases: dict[str, int] | None = None
        self.lost: set[str] = set()

    async def __call__(self, runs: dict[str, int]) -> set[str]:
        if self.leases is not None:
            return await self._renew(runs)
        self.leases = dict(runs)
        self.started.set()
        await self.release.wait()
        self.lost = await self._renew(runs)
        self.done.set()
        return self.lost


@pytest_asyncio.fixture
async def executor(tmp_path: Path, database_url: str) -> AsyncIterator[Executor]:
    """ack_wait 3 s: the heartbeat renews leases every second."""
    env = {"KAIROS_PYTHON_RUNNER_MODULES": TEST_AGENTS, "KAIROS_EXECUTOR_ACK_WAIT_S": "3"}
    async with connect_executor(tmp_path, database_url, env) as running:
        yield running


async def wait(event: asyncio.Event) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        await event.wait()


async def test_a_stale_renewal_of_an_ended_attempt_does_not_stop_the_next_attempt(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = executor.holding()
    await held.start()
    stopped: asyncio.Queue[dict] = asyncio.Queue()

    async def on_stopped(message) -> None:
        await stopped.put(json.loads(message.data))

    stopped_subject = f"{held.ready_subject}.stopped"
    await executor.nc.subscribe(stopped_subject, cb=on_stopped)
    await executor.nc.flush()
    fire_id = await executor.fire(
        "leased",
        "kairos.testing_agents:wait_for_release",
        policies=trigger_pb2.Policies(retry=fast_retry(2)),
        run_input=held.input | {"stopped_subject": stopped_subject},
    )
    first = await held.next_ready()
    assert first["attempt"] == 1

    renewal = HeldRenewal(executor.suite.runtime.extras["executor.runs"])
    monkeypatch.setattr(executor.suite.runtime.extras["executor.runs"], "renew_leases", renewal)
    await wait(renewal.started)
    await executor.nc.publish(held.release_subject, b"fail")
    second = await held.next_ready()
    assert (second["run"], second["attempt"]) == (first["run"], 2)

    renewal.release.set()
    await wait(renewal.done)
    assert renewal.lost == set(renewal.leases) and len(renewal.lost) == 1, "the held renewal named attempt 1"

    await held.release()
    stopping = asyncio.ensure_future(stopped.get())
    ending = asyncio.ensure_future(executor.ended(fire_id))  # fails itself after TIMEOUT_S
    done, pending = await asyncio.wait({stopping, ending}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert stopping not in done, f"attempt 2 was stopped: {stopping.result()}"
    event = ending.result()
    assert (event.type, event.attempt, event.run) == ("run.completed", 2, first["run"])
