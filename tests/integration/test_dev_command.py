"""`kairos dev` as a new user runs it: one command starts NATS, SQLite and all four services on one gRPC
address, prints a development API key, stops cleanly on Ctrl-C, and a second start reuses the data."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path
from urllib.parse import urlsplit

import nats
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.client import KairosClient, schedule_trigger
from kairos.core.natsserver import EmbeddedNatsServer
from kairos.devtools.processes import KAIROS_COMMAND
from kairos.v1 import run_pb2, run_service_pb2, trigger_service_pb2

START_TIMEOUT_S = 60


async def start_dev(
    data_dir: Path, nats_url: str = "", log: Path | None = None
) -> tuple[asyncio.subprocess.Process, str, str, list[str]]:
    """Starts `kairos dev` (on its own NATS, or on `nats_url`; its log written to `log`, else dropped); returns the
    process, the gRPC address and the API key it printed, and the banner lines up to the key."""
    env = {k: v for k, v in os.environ.items() if k != "KAIROS_NATS_URL"}
    env.update(KAIROS_GRPC_PORT="0", KAIROS_HTTP_PORT="0")
    if nats_url:
        env["KAIROS_NATS_URL"] = nats_url
    stderr = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if log else asyncio.subprocess.DEVNULL
    try:
        process = await asyncio.create_subprocess_exec(
            str(KAIROS_COMMAND),
            "--data-dir",
            str(data_dir),
            "dev",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    finally:
        if log:
            os.close(stderr)  # the child has its own copy
    address = key = ""
    banner: list[str] = []
    async with asyncio.timeout(START_TIMEOUT_S):
        while not key:
            line = (await process.stdout.readline()).decode()
            banner.append(line)
            if not line:
                raise AssertionError(f"kairos dev exited early with {await process.wait()}")
            if match := re.match(r"\s+gRPC\s+(\S+)", line):
                address = match.group(1)
            if match := re.match(r"\s+export KAIROS_API_KEY=(\S+)", line):
                key = match.group(1)
    return process, address, key, banner


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
    process, address, key, _ = await start_dev(data_dir)
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

    process, address, second_key, _ = await start_dev(data_dir)
    try:
        assert second_key != key
        async with KairosClient(address, second_key) as kairos:
            again = await kairos.triggers.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=created.trigger.name))
        assert again.trigger.source.schedule.cron.expression == "0 9 * * *"
    finally:
        await interrupt(process)


@pytest.mark.timeout(180)
async def test_dev_on_a_nats_of_the_users_own_never_prints_its_credentials(tmp_path: Path) -> None:
    users = 'authorization { users = [ { user: "kairos", password: "s3cret" } ] }'
    async with EmbeddedNatsServer(tmp_path / "nats", extra_config=users) as server:
        data_dir = tmp_path / ".kairos"
        log = tmp_path / "dev.log"
        url = f"nats://kairos:s3cret@{server.host}:{server.port}"
        process, address, key, banner = await start_dev(data_dir, url, log)
        try:
            async with KairosClient(address, key) as kairos:
                await kairos.triggers.CreateTrigger(
                    trigger_service_pb2.CreateTriggerRequest(trigger=schedule_trigger(cron="0 9 * * *"))
                )
        finally:
            output = await interrupt(process)
    assert f"  NATS       nats://{server.host}:{server.port}\n" in banner
    logged = log.read_text()
    assert "nats_url" in logged  # the log does name the server (on the way down, nats.disconnected)
    assert "s3cret" not in "".join(banner) + output + logged
    assert not (data_dir / "nats").exists(), "kairos dev started a NATS of its own"


@pytest.mark.timeout(180)
async def test_a_second_dev_on_the_same_data_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / ".kairos"
    first, address, _, _ = await start_dev(data_dir)
    try:
        endpoints = (data_dir / "endpoints.json").read_text()
        env = {k: v for k, v in os.environ.items() if k != "KAIROS_NATS_URL"}
        second = await asyncio.create_subprocess_exec(
            str(KAIROS_COMMAND),
            "--data-dir",
            str(data_dir),
            "dev",
            env={**env, "KAIROS_GRPC_PORT": "0", "KAIROS_HTTP_PORT": "0"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(60):
                output, errors = await second.communicate()
        finally:
            if second.returncode is None:
                os.killpg(second.pid, signal.SIGKILL)
                await second.wait()
        assert second.returncode == 1
        assert f"kairos dev is already running on {data_dir.resolve()} (pid {first.pid})" in errors.decode()
        assert b"Kairos is running" not in output
        assert (data_dir / "endpoints.json").read_text() == endpoints, "the first one's addresses stay for the CLI"
        async with KairosClient(address, "") as kairos:
            health = await health_pb2_grpc.HealthStub(kairos._channels[address]).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await interrupt(first)
    assert not (data_dir / "endpoints.json").exists(), "a stopped kairos dev leaves no address behind for the CLI"


@pytest.mark.timeout(120)
async def test_ctrl_c_stops_dev_while_it_still_waits_for_nats(tmp_path: Path) -> None:
    """A NATS that accepts connections and never answers keeps start-up waiting (for 10 s, then an error): Ctrl-C
    in that time stops kairos dev at once, cleanly, instead of being ignored until start-up ends."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {
        **os.environ,
        "KAIROS_NATS_URL": f"nats://127.0.0.1:{port}",
        "KAIROS_GRPC_PORT": "0",
        "KAIROS_HTTP_PORT": "0",
    }
    process = await asyncio.create_subprocess_exec(
        str(KAIROS_COMMAND),
        "--data-dir",
        str(tmp_path / ".kairos"),
        "dev",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(30):
            await connected.wait()
        output = await interrupt(process)  # exits 0: without the stop, start-up fails after 10 s with exit code 1
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert "Kairos stopped." in output
    assert "Kairos is running" not in output


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
    process, address, key, _ = await start_dev(tmp_path / ".kairos")
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
            readme_tour() + '\necho "TOUR_TRIGGER=$TRIGGER TOUR_EVENT_TRIGGER=$EVENT_TRIGGER"\n',
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
        assert '{"event_id":"msg_1","status":"accepted"}' in output, output  # signed with the reference library
        assert "At 09:00 AM, Monday through Friday" in output, output
        trigger = re.search(r"TOUR_TRIGGER=(\S+)", output).group(1)
        event_trigger = re.search(r"TOUR_EVENT_TRIGGER=(\S+)", output).group(1)
        published = [json.loads(answer) for answer in re.findall(r'^\{\n  "event_id".*?^\}', output, re.M | re.S)]
        assert [answer.get("fire_ids", []) for answer in published] == [
            [f"{event_trigger}@event:{published[0]['event_id']}"],
            [],
        ]
        assert '"type": "thread.member_joined"' in output, output

        ended: dict[str, str] = {}  # trigger -> how its first run ended
        async with asyncio.timeout(30):
            async for message in traces.messages:
                event = run_pb2.TraceEvent.FromString(message.data)
                if event.trigger in (trigger, event_trigger) and event.type in ("run.completed", "run.failed"):
                    ended.setdefault(event.trigger, event.type)
                    if len(ended) == 2:
                        break
        await tracer.close()
        assert ended == {trigger: "run.completed", event_trigger: "run.completed"}
        async with KairosClient(address, key) as kairos:
            runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger))).runs
            event_runs = (await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=event_trigger))).runs
        assert [run.status for run in runs] == [run_pb2.RunStatus.RUN_STATUS_COMPLETED]
        assert runs[0].input["phone_to"] == "+15550100"
        assert [json_format.MessageToDict(run.payload)["payload"]["member"] for run in event_runs] == ["ada"]
    finally:
        await interrupt(process)
