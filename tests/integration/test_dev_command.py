"""`kairos dev` as a new user runs it: one command starts NATS, SQLite and all four services on one gRPC
address, prints a development API key, stops cleanly on Ctrl-C, and a second start reuses the data."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sysconfig
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.client import KairosClient, schedule_trigger
from kairos.v1 import trigger_service_pb2

KAIROS = Path(sysconfig.get_path("scripts")) / "kairos"
START_TIMEOUT_S = 60


async def start_dev(data_dir: Path) -> tuple[asyncio.subprocess.Process, str, str]:
    """Starts `kairos dev`; returns the process, the gRPC address and the API key it printed."""
    env = {k: v for k, v in os.environ.items() if k != "KAIROS_NATS_URL"}
    env.update(KAIROS_GRPC_PORT="0", KAIROS_HTTP_PORT="0")
    process = await asyncio.create_subprocess_exec(
        str(KAIROS),
        "--data-dir",
        str(data_dir),
        "dev",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    address = key = ""
    async with asyncio.timeout(START_TIMEOUT_S):
        while not key:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"kairos dev exited early with {await process.wait()}")
            if match := re.match(r"\s+gRPC\s+(\S+)", line):
                address = match.group(1)
            if match := re.match(r"\s+export KAIROS_API_KEY=(\S+)", line):
                key = match.group(1)
    return process, address, key


async def interrupt(process: asyncio.subprocess.Process) -> str:
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        rest = (await process.stdout.read()).decode()
        assert await process.wait() == 0
    return rest


@pytest.mark.timeout(180)
async def test_dev_runs_the_suite_stops_cleanly_and_reuses_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / ".kairos"
    process, address, key = await start_dev(data_dir)
    try:
        async with KairosClient(address, key) as kairos:
            health = await health_pb2_grpc.HealthStub(kairos._channels[address]).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            created = await kairos.triggers.CreateTrigger(
                trigger_service_pb2.CreateTriggerRequest(trigger=schedule_trigger(cron="0 9 * * *"))
            )
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
        assert endpoints["grpc"] == address
        assert endpoints["webhooks"].startswith("http://127.0.0.1:")
    finally:
        output = await interrupt(process)
    assert "Kairos stopped." in output
    nats_address = urlsplit(endpoints["nats"])
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(nats_address.hostname, nats_address.port)

    process, address, second_key = await start_dev(data_dir)
    try:
        assert second_key != key
        async with KairosClient(address, second_key) as kairos:
            again = await kairos.triggers.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=created.trigger.name))
        assert again.trigger.source.schedule.cron.expression == "0 9 * * *"
    finally:
        await interrupt(process)
