"""Kairos services as real operating-system processes (`python -m kairos.<service>`), for the tests that kill,
restart or stop them: each process logs to its own file, a launch waits until gRPC health answers SERVING,
and `stop_all` sends SIGTERM and reports every exit code (SIGKILL after a grace period)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from kairos.core.natsserver import free_port
from kairos.devtools.suite import wait_serving

# The `kairos` command of this environment, for tests that run it as a user does.
KAIROS_COMMAND = Path(sysconfig.get_path("scripts")) / "kairos"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 20.0


async def terminate(process: asyncio.subprocess.Process, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM (unless it already exited), then SIGKILL after `grace_s`; the exit code."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace_s):
            return await process.wait()
    except TimeoutError:
        process.kill()
        return await process.wait()


@dataclass
class ServiceProcess:
    """One service process; `start` again after `kill` or `stop` reuses its port, environment and log file."""

    label: str
    service: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, *, wait: bool = True) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"kairos.{self.service}", env=self.env, stdout=log, stderr=log
            )
        if wait:
            await self.wait_serving()

    async def wait_serving(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        if not await wait_serving(self.address, timeout_s):
            raise AssertionError(f"{self.label} did not serve on {self.address}\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        assert self.process is not None, f"{self.label} was never started"
        self.process.send_signal(signum)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; the exit code (None if it was never started)."""
        if self.process is None:
            return None
        return await terminate(self.process, grace_s)

    def log_tail(self, chars: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.label}\n{text[-chars:]}"


class ServiceProcesses:
    """The service processes of one test, sharing a base environment (NATS URL, admin key...)."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self.env = {**os.environ, "KAIROS_LOG_FORMAT": "json", **env}
        self.launched: dict[str, ServiceProcess] = {}

    async def launch(
        self,
        service: str,
        *,
        label: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> ServiceProcess:
        """Starts `python -m kairos.<service>` on `port` (a free one by default) with `env` over the base."""
        label = label or service
        if label in self.launched:
            raise ValueError(f"a process labelled {label!r} was already launched")
        port = port or free_port()
        process = ServiceProcess(
            label,
            service,
            port,
            {**self.env, "KAIROS_GRPC_PORT": str(port), **(env or {})},
            self.logs / f"{label}.log",
        )
        self.launched[label] = process
        await process.start(wait=wait)
        return process

    async def wait_serving(self) -> None:
        """Waits until every launched process serves (each within READY_TIMEOUT_S): for launches with wait=False."""
        await asyncio.gather(*(process.wait_serving() for process in self.launched.values()))

    async def stop_all(self) -> dict[str, int | None]:
        """Stops every process at once; each one's exit code by label."""
        codes = await asyncio.gather(*(process.stop() for process in self.launched.values()))
        return dict(zip(self.launched, codes, strict=True))

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(process.log_tail(chars) for process in self.launched.values())

    async def __aenter__(self) -> ServiceProcesses:
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.stop_all()
