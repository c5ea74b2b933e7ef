"""Agent runners: how the executor reaches an agent (python in-process, http, nats request/reply)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Sequence
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient

from kairos.core import messaging
from kairos.executor.notify import Signer
from kairos.executor.runs import parsed_trigger
from kairos.v1 import trigger_pb2

# An http agent's answer is read up to this size, as a nats agent's is bounded by the NATS max payload (1 MiB by
# default): it becomes the run's output, kept and served whole.
MAX_ANSWER_BYTES = 1 << 20


class AgentError(Exception):
    """The agent failed; `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Runners:
    """Dispatches a run envelope to the trigger's runner and returns the agent's JSON output."""

    def __init__(
        self, nats: NatsClient, http: httpx.AsyncClient, python_modules: Sequence[str], signer: Signer | None = None
    ) -> None:
        self._nats = nats
        self._http = http
        self._signer = signer or Signer("")
        self._python_modules = tuple(python_modules)

    async def run(self, runner: trigger_pb2.Runner, agent: str, envelope: dict[str, Any], timeout: float) -> Any:
        kind = runner.WhichOneof("kind")
        if kind == "python":
            return await self._python(runner.python.entry_point, envelope, timeout)
        if kind == "http":
            return await self._http_post(runner.http.url, envelope, timeout)
        if kind == "nats":
            subject = runner.nats.subject or f"{messaging.AGENT_SUBJECT_PREFIX}{agent.removeprefix('agents/')}.run"
            if messaging.reserved_for_kairos(subject):  # the registry refuses it; a trigger from before may have it
                raise AgentError(f"the runner's subject {subject!r} is one of Kairos' own", retryable=False)
            return await self._nats_request(subject, envelope, timeout)
        raise AgentError("the trigger has no runner", retryable=False)

    def _allowed(self, module: str) -> bool:
        return any(module == allowed or module.startswith(f"{allowed}.") for allowed in self._python_modules)

    async def _python(self, entry_point: str, envelope: dict[str, Any], timeout: float) -> Any:
        module_name, _, function_name = entry_point.partition(":")
        if not self._allowed(module_name):
            raise AgentError(
                f"python entry point {entry_point!r} is outside KAIROS_PYTHON_RUNNER_MODULES "
                f"({', '.join(self._python_modules)})",
                retryable=False,
            )
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise AgentError(f"cannot load {entry_point!r}: {error}", retryable=False) from error
        try:
            async with asyncio.timeout(timeout):
                if inspect.iscoroutinefunction(function):
                    return await function(envelope)
                return await asyncio.to_thread(function, envelope)
        except TimeoutError:
            raise
        except Exception as error:
            raise AgentError(f"{type(error).__name__}: {error}") from error

    async def _http_post(self, url: str, envelope: dict[str, Any], timeout: float) -> Any:
        body = json.dumps(envelope)
        workspace = parsed_trigger(envelope["trigger"]).workspace
        headers = self._signer.headers(workspace, f"{envelope.get('run', '')}/{envelope.get('attempt', 0)}", body)
        try:
            async with self._http.stream("POST", url, content=body, headers=headers, timeout=timeout) as response:
                if response.status_code >= 500:
                    raise AgentError(f"agent answered {response.status_code}")
                if response.status_code >= 400:
                    raise AgentError(f"agent refused the run with {response.status_code}", retryable=False)
                answer = await _bounded_body(response)
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.HTTPError as error:
            raise AgentError(f"agent unreachable: {error}") from error
        try:
            return json.loads(answer) if answer else None
        except ValueError as error:
            raise AgentError("agent answered with a body that is not JSON", retryable=False) from error

    async def _nats_request(self, subject: str, envelope: dict[str, Any], timeout: float) -> Any:
        try:
            reply = await self._nats.request(subject, json.dumps(envelope).encode(), timeout=timeout)
        except TimeoutError:
            raise
        except Exception as error:
            raise AgentError(f"no agent answered on {subject}: {error}") from error
        try:
            return json.loads(reply.data) if reply.data else None
        except ValueError as error:
            raise AgentError("agent replied with a body that is not JSON", retryable=False) from error


async def _bounded_body(response: httpx.Response) -> bytes:
    """An http agent's answer, read only up to MAX_ANSWER_BYTES: the agent's URL is the workspace's to choose, and
    an answer without end would take the memory every workspace's runs share."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AgentError(f"agent answered with more than {MAX_ANSWER_BYTES} bytes", retryable=False)
        chunks.append(chunk)
    return b"".join(chunks)
