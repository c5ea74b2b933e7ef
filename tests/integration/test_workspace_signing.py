"""Per-workspace signing of the requests Kairos sends (the http runner's, notify_url callbacks): RotateSigningSecret
shows a workspace its own `whsec_` secret once, the registry stores and feeds it only sealed, and the executor signs
that workspace's requests with it, so one tenant's receiver cannot be sent requests forged or replayed with a
secret another tenant also holds. A workspace without one keeps KAIROS_NOTIFY_SIGNING_SECRET, the deployment's.
Rotation with a grace period signs with both secrets meanwhile (two signatures); without one, the old stops at
once. Requests are verified with the `standardwebhooks` reference library, against the whole suite in-process
(real gRPC, NATS, SQLite and PostgreSQL) and a local receiver."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import uvicorn
from google.protobuf import duration_pb2
from sqlalchemy import select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kairos.client import error_details, webhook_trigger
from kairos.core import db
from kairos.devtools.processes import KAIROS_COMMAND
from kairos.devtools.suite import Suite, running_suite
from kairos.registry.models import WorkspaceSigningKeyRow
from kairos.v1 import trigger_service_pb2, workspace_service_pb2

DEPLOYMENT_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
WAIT_S = 30.0


class Receiver:
    """A local HTTP agent that records each request's headers and body and answers 200."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[dict[str, str], str]] = asyncio.Queue()
        self.url = ""

    async def agent(self, request: Request) -> JSONResponse:
        await self.requests.put((dict(request.headers), (await request.body()).decode()))
        return JSONResponse({"ok": True})

    async def next_request(self) -> tuple[dict[str, str], str]:
        async with asyncio.timeout(WAIT_S):
            return await self.requests.get()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    result = Receiver()
    result.url = f"http://127.0.0.1:{listener.getsockname()[1]}/agent"
    app = Starlette(routes=[Route("/agent", result.agent, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield result
    finally:
        server.should_exit = True
        await task
        listener.close()


@pytest_asyncio.fixture
async def suite(tmp_path: Path, database_url: str) -> AsyncIterator[Suite]:
    env = {"KAIROS_NOTIFY_SIGNING_SECRET": DEPLOYMENT_SECRET}
    async with running_suite(tmp_path, database_url, ("registry", "executor"), env=env) as running:
        yield running


def verifies(secret: str, headers: dict[str, str], body: str) -> bool:
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


async def rotate(
    suite: Suite, api_key: str, workspace: str, keys_after: int, grace: duration_pb2.Duration | None = None
) -> str:
    """Rotates `workspace`'s signing secret; returns it once the executor holds the workspace's `keys_after` keys."""
    async with suite.client(api_key) as kairos:
        response = await kairos.workspaces.RotateSigningSecret(
            workspace_service_pb2.RotateSigningSecretRequest(name=f"workspaces/{workspace}", grace_period=grace)
        )
    mirror = suite.runtime.extras["executor.workspaces"]
    async with asyncio.timeout(WAIT_S):
        await mirror.wait_until(workspace, lambda record: record is not None and len(record.signing_keys) == keys_after)
    return response.signing_secret


async def request_of_a_run(suite: Suite, api_key: str, receiver: Receiver) -> tuple[dict[str, str], str]:
    """Fires a new trigger whose agent is `receiver`; the request its run sent."""
    async with suite.client(api_key) as kairos:
        trigger = (
            await kairos.triggers.CreateTrigger(
                trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger(http_url=receiver.url))
            )
        ).trigger
        await kairos.triggers.FireTrigger(trigger_service_pb2.FireTriggerRequest(name=trigger.name))
    return await receiver.next_request()


async def test_each_workspace_signs_with_its_own_secret_and_rotation_overlaps_for_the_grace_period(
    suite: Suite, receiver: Receiver
) -> None:
    tenant, other = await suite.new_workspace("tenant"), await suite.new_workspace("other")

    headers, body = await request_of_a_run(suite, other, receiver)
    assert verifies(DEPLOYMENT_SECRET, headers, body), "a workspace without a secret of its own"

    first = await rotate(suite, tenant, "tenant", keys_after=1)
    assert first.startswith("whsec_") and first != DEPLOYMENT_SECRET
    headers, body = await request_of_a_run(suite, tenant, receiver)
    assert verifies(first, headers, body)
    assert not verifies(DEPLOYMENT_SECRET, headers, body), "the deployment's secret (which others hold) no longer"

    second = await rotate(suite, tenant, "tenant", keys_after=2, grace=duration_pb2.Duration(seconds=3600))
    headers, body = await request_of_a_run(suite, tenant, receiver)
    assert len(headers["webhook-signature"].split()) == 2
    assert verifies(first, headers, body) and verifies(second, headers, body), "both during the grace period"

    third = await rotate(suite, tenant, "tenant", keys_after=1)
    headers, body = await request_of_a_run(suite, tenant, receiver)
    assert verifies(third, headers, body)
    assert not verifies(first, headers, body) and not verifies(second, headers, body), "no grace: the old stop"

    headers, body = await request_of_a_run(suite, other, receiver)
    assert verifies(DEPLOYMENT_SECRET, headers, body) and not verifies(third, headers, body)

    engine = db.create_engine(suite.runtime.config.database_url)
    try:
        async with db.session_factory(engine)() as session:
            stored = (await session.scalars(select(WorkspaceSigningKeyRow))).all()
    finally:
        await engine.dispose()
    assert [row.workspace_id for row in stored] == ["tenant"]
    assert base64.b64decode(third.removeprefix("whsec_")) not in stored[0].sealed_key, "stored sealed only"


async def test_rotating_needs_a_secret_key_and_a_sane_grace_period(tmp_path: Path, suite: Suite) -> None:
    tenant = await suite.new_workspace("graceful")
    async with suite.client(tenant) as kairos:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await kairos.workspaces.RotateSigningSecret(
                workspace_service_pb2.RotateSigningSecretRequest(
                    name="workspaces/-", grace_period=duration_pb2.Duration(seconds=31 * 86400)
                )
            )
        assert error_details(raised.value).reason == "INVALID_GRACE_PERIOD"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await kairos.workspaces.RotateSigningSecret(
                workspace_service_pb2.RotateSigningSecretRequest(name="workspaces/graceful-not-mine")
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND, "another workspace is not found"
    async with running_suite(
        tmp_path / "unsealed",
        f"sqlite+aiosqlite:///{tmp_path / 'unsealed.db'}",
        ("registry",),
        env={"KAIROS_SECRET_KEY": ""},
    ) as unsealed:
        key = await unsealed.new_workspace("unsealed")
        async with unsealed.client(key) as kairos:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await kairos.workspaces.RotateSigningSecret(
                    workspace_service_pb2.RotateSigningSecretRequest(name="workspaces/-")
                )
    details = error_details(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SECRET_KEY_NOT_CONFIGURED")


async def test_the_cli_rotates_the_api_keys_own_workspace(suite: Suite, receiver: Receiver) -> None:
    api_key = await suite.new_workspace("shell")
    process = await asyncio.create_subprocess_exec(
        str(KAIROS_COMMAND),
        "workspaces",
        "rotate-signing-secret",
        env={**os.environ, "KAIROS_ADDRESS": suite.address, "KAIROS_API_KEY": api_key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT_S):
        output, errors = await process.communicate()
    assert process.returncode == 0, errors
    name, _, secret = output.decode().strip().partition("=")
    assert name == "KAIROS_SIGNING_SECRET" and secret.startswith("whsec_")
    assert b"shown once" in errors
    async with asyncio.timeout(WAIT_S):
        await suite.runtime.extras["executor.workspaces"].wait_until("shell", lambda record: record is not None)
    headers, body = await request_of_a_run(suite, api_key, receiver)
    assert verifies(secret, headers, body)
