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

import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.client import KairosClient, schedule_trigger
from kairos.v1 import run_pb2, run_service_pb2, trigger_service_pb2

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
        start_new_session=True,
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
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group."""
    os.killpg(process.pid, signal.SIGINT)
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
    nats_log = (data_dir / "nats" / "nats-server.log").read_text()
    assert 'Trapped "terminated" signal' in nats_log, "kairos dev should stop NATS itself, last"
    assert 'Trapped "interrupt" signal' not in nats_log, "the terminal's Ctrl-C reached nats-server directly"
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


def readme_tour() -> str:
    """The shell block of the README's tour that runs in the second terminal."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## A five-minute tour", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    tour = next(block for block in blocks if "source .venv/bin/activate" in block)
    return tour


@pytest.mark.timeout(180)
async def test_readme_tour_works_verbatim(tmp_path: Path) -> None:
    repo = Path(__file__).parents[2]
    assert (repo / ".venv" / "bin" / "activate").exists(), "the tour sources .venv: run the tests with make test"
    process, address, key = await start_dev(tmp_path / ".kairos")
    try:
        endpoints = json.loads((tmp_path / ".kairos" / "endpoints.json").read_text())
        tracer = await nats.connect(endpoints["nats"])
        traces = await tracer.subscribe("kairos.trace.dev.>")
        env = {
            **os.environ,
            "KAIROS_API_KEY": key,
            "KAIROS_ADDRESS": address,
            "KAIROS_WEBHOOKS_URL": endpoints["webhooks"],
        }
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            readme_tour() + '\necho "TOUR_TRIGGER=$TRIGGER"\n',
            cwd=repo,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(120):
            output = (await shell.stdout.read()).decode()
            assert await shell.wait() == 0, output
        assert "HTTP/1.1 202" in output and '"status":"accepted"' in output, output
        assert "HTTP/1.1 401" in output, output
        assert "At 09:00 AM, Monday through Friday" in output, output
        trigger = re.search(r"TOUR_TRIGGER=(\S+)", output).group(1)

        async with asyncio.timeout(30):
            async for message in traces.messages:
                event = run_pb2.TraceEvent.FromString(message.data)
                if event.trigger == trigger and event.type in ("run.completed", "run.failed"):
                    break
        await tracer.close()
        assert event.type == "run.completed", event
        async with KairosClient(address, key) as kairos:
            runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger))).runs
        assert [run.status for run in runs] == [run_pb2.RunStatus.RUN_STATUS_COMPLETED]
        assert runs[0].input["phone_to"] == "+15550100"
    finally:
        await interrupt(process)
