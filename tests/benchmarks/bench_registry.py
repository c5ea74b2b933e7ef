"""Registry throughput over gRPC on SQLite from one client process: GetTrigger and CreateTrigger."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path

from kairos.client import schedule_trigger
from kairos.core.log import configure_logging
from kairos.devtools.suite import running_suite
from kairos.v1 import trigger_service_pb2

FIGURES = ("registry.get_trigger_per_s", "registry.create_trigger_per_s")
GETS = 5_000
CREATES = 1_000
CONCURRENCY = 32


async def _spread(total: int, call) -> float:
    """Runs `call(i)` for i < total with CONCURRENCY callers; returns calls per second."""
    counter = iter(range(total))

    async def caller() -> None:
        for index in counter:
            await call(index)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return total / (time.perf_counter() - started)


async def run(report) -> None:
    configure_logging("json", "error")
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        async with running_suite(data, f"sqlite+aiosqlite:///{data / 'kairos.db'}", ("registry",)) as suite:
            key = await suite.new_workspace("bench")
            async with suite.client(key) as kairos:
                create = kairos.triggers.CreateTrigger
                trigger = schedule_trigger(cron="*/5 * * * *", timezone="Europe/Berlin", prompt="bench")
                name = (await create(trigger_service_pb2.CreateTriggerRequest(trigger=trigger))).trigger.name
                request = trigger_service_pb2.GetTriggerRequest(name=name)
                await _spread(200, lambda _: kairos.triggers.GetTrigger(request))
                gets = await _spread(GETS, lambda _: kairos.triggers.GetTrigger(request))
                report("registry.get_trigger_per_s", gets, "req/s")
                creates = await _spread(
                    CREATES, lambda _: create(trigger_service_pb2.CreateTriggerRequest(trigger=trigger))
                )
                report("registry.create_trigger_per_s", creates, "req/s")
