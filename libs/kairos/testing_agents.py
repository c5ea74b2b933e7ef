"""Agents for tests and benchmarks, run through the `python` runner. Not allow-listed by default: enable them
with `KAIROS_PYTHON_RUNNER_MODULES=kairos.agents,kairos.testing_agents`.

- `noop`: returns `{"ok": true}` at once (throughput benchmarks).
- `fail`: always raises (poison fires, retries, dead letters, pause after failures).
- `flaky`: fails until the attempt number reaches `input.succeed_on_attempt`.
- `wait_for_release`: connects to `input.nats_url`, subscribes to `input.release_subject`, announces itself
  on `input.ready_subject` (message body: the run name and attempt), then returns once a message arrives on
  the release subject. Tests use it to hold a run in the middle of its attempt without sleeping. Released
  with the body `fail`, it raises instead (a retryable failure). With `input.stopped_subject`, it announces
  there (same body) when it is cancelled before being released.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats


async def noop(envelope: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


async def fail(envelope: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError(f"this agent always fails (attempt {envelope.get('attempt')})")


async def flaky(envelope: dict[str, Any]) -> dict[str, Any]:
    attempt = int(envelope.get("attempt") or 0)
    succeed_on = int(envelope.get("input", {}).get("succeed_on_attempt", 2))
    if attempt < succeed_on:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return {"succeeded_on_attempt": attempt}


async def wait_for_release(envelope: dict[str, Any]) -> dict[str, Any]:
    settings = envelope.get("input", {})
    nc = await nats.connect(settings["nats_url"], name="kairos-testing-agent")
    try:
        released: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_release(message) -> None:
            if not released.done():
                released.set_result(message.data)

        await nc.subscribe(settings["release_subject"], cb=on_release)
        await nc.flush()
        ready = {"run": envelope.get("run"), "attempt": envelope.get("attempt")}
        await nc.publish(settings["ready_subject"], json.dumps(ready).encode())
        await nc.flush()
        try:
            body = await released
        except asyncio.CancelledError:
            if settings.get("stopped_subject"):
                await nc.publish(settings["stopped_subject"], json.dumps(ready).encode())
                await nc.flush()
            raise
        if body == b"fail":
            raise RuntimeError(f"released to fail (attempt {envelope.get('attempt')})")
        return {"released": body.decode() or True, "attempt": envelope.get("attempt")}
    finally:
        await nc.close()
