"""The gRPC plumbing every service shares, over a real server and channel on 127.0.0.1.

`kairos.core.grpcserver.GrpcServer` with the standard interceptors (request context, error mapping, API-key
auth), grpc.health.v1 and server reflection; a tiny TriggerService servicer exercises authentication, the
principal contextvar, workspace scoping and the mapping of errors to rich statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import pytest_asyncio
import structlog
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from kairos.client import error_details
from kairos.core import secrets
from kairos.core.auth import (
    Authenticator,
    Principal,
    check_workspace,
    current_principal,
    principal,
    require_admin,
    workspace_for,
)
from kairos.core.errors import ERROR_DOMAIN, KairosError, invalid_argument
from kairos.core.grpcserver import GrpcServer
from kairos.core.names import parse_trigger
from kairos.v1 import feed_pb2, trigger_pb2, trigger_service_pb2, trigger_service_pb2_grpc

SERVICE = "kairos.v1.TriggerService"
ADMIN_KEY = "admin-" + secrets.new_secret("adm")
LEAKY_TEXT = "db password is hunter2"
ACME_KEY_ID = "k1acme"
EXPIRED_KEY_ID = "k2old"
FUTURE_KEY_ID = "k3future"


class TriggerServicer(trigger_service_pb2_grpc.TriggerServiceServicer):
    """Answers GetTrigger with who called; some trigger ids make it fail on purpose."""

    async def GetTrigger(self, request, context):
        name = parse_trigger(request.name)
        check_workspace(name.workspace, request.name)
        if name.trigger == "invalid":
            raise invalid_argument("INVALID_CRON_EXPRESSION", "trigger.source.schedule.cron.expression", "bad cron")
        if name.trigger == "boom":
            raise RuntimeError(LEAKY_TEXT)
        if name.trigger == "request-id":
            return trigger_service_pb2.GetTriggerResponse(
                trigger=trigger_pb2.Trigger(display_name=structlog.contextvars.get_contextvars()["request_id"])
            )
        caller = principal()
        return trigger_service_pb2.GetTriggerResponse(
            trigger=trigger_pb2.Trigger(
                name=request.name,
                display_name=caller.key_name,
                description="admin" if caller.is_admin else f"workspace:{caller.workspace}",
            )
        )

    async def ListTriggers(self, request, context):
        workspace = workspace_for(request.parent)
        return trigger_service_pb2.ListTriggersResponse(
            triggers=[trigger_pb2.Trigger(name=f"workspaces/{workspace}/triggers/t1")]
        )

    async def PauseTrigger(self, request, context):
        require_admin()
        return trigger_service_pb2.PauseTriggerResponse()


@dataclass
class Keys:
    acme: str
    expired: str
    future: str
    unknown_id: str


@dataclass
class Running:
    address: str
    keys: Keys
    looked_up: list[str]

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)


@pytest_asyncio.fixture
async def running() -> AsyncIterator[Running]:
    keys = Keys(
        acme=secrets.new_api_key(ACME_KEY_ID),
        expired=secrets.new_api_key(EXPIRED_KEY_ID),
        future=secrets.new_api_key(FUTURE_KEY_ID),
        unknown_id=secrets.new_api_key("nosuchkey"),
    )
    now = datetime.now(UTC)
    records = {
        ACME_KEY_ID: feed_pb2.ApiKeyRecord(
            name=f"workspaces/acme/apiKeys/{ACME_KEY_ID}", digest=secrets.digest(keys.acme)
        ),
        EXPIRED_KEY_ID: feed_pb2.ApiKeyRecord(
            name=f"workspaces/acme/apiKeys/{EXPIRED_KEY_ID}", digest=secrets.digest(keys.expired)
        ),
        FUTURE_KEY_ID: feed_pb2.ApiKeyRecord(
            name=f"workspaces/globex/apiKeys/{FUTURE_KEY_ID}", digest=secrets.digest(keys.future)
        ),
    }
    records[EXPIRED_KEY_ID].expire_time.FromDatetime(now - timedelta(seconds=1))
    records[FUTURE_KEY_ID].expire_time.FromDatetime(now + timedelta(hours=1))
    looked_up: list[str] = []

    async def lookup(key_id: str) -> feed_pb2.ApiKeyRecord | None:
        looked_up.append(key_id)
        return records.get(key_id)

    server = GrpcServer(Authenticator(lookup, ADMIN_KEY))
    trigger_service_pb2_grpc.add_TriggerServiceServicer_to_server(TriggerServicer(), server.server)
    server.add(SERVICE)
    port = await server.start("127.0.0.1", 0)
    assert port > 0 and server.port == port
    try:
        yield Running(f"127.0.0.1:{port}", keys, looked_up)
    finally:
        await server.stop(0)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def get_trigger(running: Running, name: str, metadata=None) -> trigger_service_pb2.GetTriggerResponse:
    async with running.channel() as channel:
        stub = trigger_service_pb2_grpc.TriggerServiceStub(channel)
        return await stub.GetTrigger(trigger_service_pb2.GetTriggerRequest(name=name), metadata=metadata, timeout=10)


async def failure(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


# ---------------------------------------------------------------- health and reflection


async def test_health_reports_serving_without_credentials(running: Running) -> None:
    async with running.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        error = await failure(health.Check(health_pb2.HealthCheckRequest(service="kairos.v1.Nope"), timeout=10))
        assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_services_without_credentials(running: Running) -> None:
    async with running.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        responses = [response async for response in call]
    assert len(responses) == 1
    assert responses[0].WhichOneof("message_response") == "list_services_response"
    listed = {service.name for service in responses[0].list_services_response.service}
    assert listed == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


async def test_reflection_serves_the_service_descriptor(running: Running) -> None:
    async with running.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
        responses = [response async for response in stub.ServerReflectionInfo(iter([request]), timeout=10)]
    assert responses[0].WhichOneof("message_response") == "file_descriptor_response"
    assert responses[0].file_descriptor_response.file_descriptor_proto


async def test_an_unknown_method_is_unimplemented(running: Running) -> None:
    async with running.channel() as channel:
        call = channel.unary_unary("/kairos.v1.TriggerService/NoSuchMethod")
        for _ in range(2):
            error = await failure(call(b"", metadata=bearer(running.keys.acme), timeout=10))
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_each_call_logs_under_its_own_request_id(running: Running) -> None:
    name = "workspaces/acme/triggers/request-id"
    given = (*bearer(running.keys.acme), ("x-request-id", "req_from_the_caller"))
    assert (await get_trigger(running, name, given)).trigger.display_name == "req_from_the_caller"
    minted = {(await get_trigger(running, name, bearer(running.keys.acme))).trigger.display_name for _ in range(2)}
    assert len(minted) == 2 and all(request_id.startswith("req") for request_id in minted)


# ---------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", ""),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer   "),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "kairos_k1acme_secret"),),
        (("x-api-key", "whatever"),),
    ],
)
async def test_missing_or_malformed_credentials_are_unauthenticated(running: Running, metadata) -> None:
    error = await failure(get_trigger(running, "workspaces/acme/triggers/t1", metadata))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_details(error).reason == "UNAUTHENTICATED"


async def test_wrong_secret_is_unauthenticated(running: Running) -> None:
    forged = running.keys.acme[:-4] + ("AAAA" if not running.keys.acme.endswith("AAAA") else "BBBB")
    error = await failure(get_trigger(running, "workspaces/acme/triggers/t1", bearer(forged)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "invalid API key"
    assert ACME_KEY_ID in running.looked_up


async def test_unknown_key_id_and_non_kairos_key_are_unauthenticated(running: Running) -> None:
    for key in (running.keys.unknown_id, "not-a-kairos-key", ADMIN_KEY + "x"):
        error = await failure(get_trigger(running, "workspaces/acme/triggers/t1", bearer(key)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, key
        assert error.details() == "invalid API key"


async def test_expired_key_is_unauthenticated(running: Running) -> None:
    error = await failure(get_trigger(running, "workspaces/acme/triggers/t1", bearer(running.keys.expired)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "API key expired"


async def test_valid_key_gives_the_handler_its_workspace(running: Running) -> None:
    response = await get_trigger(running, "workspaces/acme/triggers/t1", bearer(running.keys.acme))
    assert response.trigger.name == "workspaces/acme/triggers/t1"
    assert response.trigger.display_name == f"workspaces/acme/apiKeys/{ACME_KEY_ID}"
    assert response.trigger.description == "workspace:acme"
    # the scheme is case-insensitive
    lower = await get_trigger(
        running, "workspaces/acme/triggers/t1", (("authorization", f"bearer {running.keys.acme}"),)
    )
    assert lower.trigger.description == "workspace:acme"


async def test_key_with_future_expiry_is_accepted(running: Running) -> None:
    response = await get_trigger(running, "workspaces/globex/triggers/t1", bearer(running.keys.future))
    assert response.trigger.description == "workspace:globex"


async def test_admin_key_is_the_admin_principal(running: Running) -> None:
    response = await get_trigger(running, "workspaces/anyone/triggers/t1", bearer(ADMIN_KEY))
    assert response.trigger.display_name == "admin"
    assert response.trigger.description == "admin"
    async with running.channel() as channel:
        stub = trigger_service_pb2_grpc.TriggerServiceStub(channel)
        await stub.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(), metadata=bearer(ADMIN_KEY), timeout=10)
        error = await failure(
            stub.PauseTrigger(trigger_service_pb2.PauseTriggerRequest(), metadata=bearer(running.keys.acme), timeout=10)
        )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_details(error).reason == "PERMISSION_DENIED"


async def test_principal_does_not_leak_between_calls(running: Running) -> None:
    await get_trigger(running, "workspaces/acme/triggers/t1", bearer(ADMIN_KEY))
    response = await get_trigger(running, "workspaces/acme/triggers/t1", bearer(running.keys.acme))
    assert response.trigger.description == "workspace:acme"
    error = await failure(get_trigger(running, "workspaces/acme/triggers/t1"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- workspace scoping over the wire


async def test_other_workspace_is_not_found_over_the_wire(running: Running) -> None:
    error = await failure(get_trigger(running, "workspaces/globex/triggers/t1", bearer(running.keys.acme)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    details = error_details(error)
    assert details.reason == "NOT_FOUND"
    assert details.message == "workspaces/globex/triggers/t1 not found"


async def test_list_parent_resolution(running: Running) -> None:
    async with running.channel() as channel:
        stub = trigger_service_pb2_grpc.TriggerServiceStub(channel)

        async def listed(parent: str, key: str) -> str:
            request = trigger_service_pb2.ListTriggersRequest(parent=parent)
            response = await stub.ListTriggers(request, metadata=bearer(key), timeout=10)
            return response.triggers[0].name

        acme = running.keys.acme
        assert await listed("workspaces/-", acme) == "workspaces/acme/triggers/t1"
        assert await listed("", acme) == "workspaces/acme/triggers/t1"
        assert await listed("workspaces/acme", acme) == "workspaces/acme/triggers/t1"
        assert await listed("workspaces/globex", ADMIN_KEY) == "workspaces/globex/triggers/t1"
        error = await failure(listed("workspaces/globex", acme))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = await failure(listed("workspaces/-", ADMIN_KEY))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        error = await failure(listed("projects/x", acme))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(error).field_violations.keys() == {"parent"}


# ---------------------------------------------------------------- error mapping


async def test_kairos_error_arrives_with_reason_domain_and_field_violation(running: Running) -> None:
    error = await failure(get_trigger(running, "workspaces/acme/triggers/invalid", bearer(running.keys.acme)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error_details(error)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_CRON_EXPRESSION"
    assert details.message == "trigger.source.schedule.cron.expression: bad cron"
    assert details.field_violations == {"trigger.source.schedule.cron.expression": "bad cron"}
    status = rpc_status.from_call(error)
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    infos = []
    for packed in status.details:
        info = error_details_pb2.ErrorInfo()
        if packed.Unpack(info):
            infos.append(info)
    assert [(info.reason, info.domain) for info in infos] == [("INVALID_CRON_EXPRESSION", ERROR_DOMAIN)]
    assert ERROR_DOMAIN == "kairos.dev"


async def test_bad_resource_name_is_invalid_argument_naming_the_field(running: Running) -> None:
    error = await failure(get_trigger(running, "workspaces/acme/webhooks/w1", bearer(running.keys.acme)))
    details = error_details(error)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_RESOURCE_NAME"
    assert list(details.field_violations) == ["name"]


async def test_unexpected_exception_is_internal_without_leaking(running: Running) -> None:
    error = await failure(get_trigger(running, "workspaces/acme/triggers/boom", bearer(running.keys.acme)))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert LEAKY_TEXT not in (error.details() or "")
    assert LEAKY_TEXT not in str(error.trailing_metadata())
    assert "RuntimeError" not in (error.details() or "")
    # the server keeps serving afterwards
    response = await get_trigger(running, "workspaces/acme/triggers/t1", bearer(running.keys.acme))
    assert response.trigger.description == "workspace:acme"


async def test_unauthenticated_error_carries_error_info(running: Running) -> None:
    error = await failure(get_trigger(running, "workspaces/acme/triggers/t1"))
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("UNAUTHENTICATED", ERROR_DOMAIN)


# ---------------------------------------------------------------- auth helpers in-process


def _as(caller: Principal | None):
    token = current_principal.set(caller)
    return token


@pytest.mark.parametrize("caller", [Principal("acme", "workspaces/acme/apiKeys/k1")])
def test_workspace_for_and_check_workspace_for_a_workspace_key(caller: Principal) -> None:
    token = _as(caller)
    try:
        assert workspace_for("") == "acme"
        assert workspace_for("workspaces/-") == "acme"
        assert workspace_for("workspaces/acme") == "acme"
        with pytest.raises(KairosError) as raised:
            workspace_for("workspaces/globex")
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        assert raised.value.message == "workspaces/globex not found"
        with pytest.raises(KairosError) as raised:
            workspace_for("workspaces/Globex", "request.parent")
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.violations[0].field == "request.parent"
        check_workspace("acme", "workspaces/acme/triggers/t1")
        with pytest.raises(KairosError) as raised:
            check_workspace("globex", "workspaces/globex/triggers/t1")
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        assert raised.value.message == "workspaces/globex/triggers/t1 not found"
        with pytest.raises(KairosError) as raised:
            require_admin()
        assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        current_principal.reset(token)


def test_workspace_for_and_check_workspace_for_the_admin() -> None:
    token = _as(Principal(None, "admin"))
    try:
        assert principal().is_admin
        assert require_admin().key_name == "admin"
        assert workspace_for("workspaces/globex") == "globex"
        check_workspace("anything", "workspaces/anything")
        for parent in ("", "workspaces/-"):
            with pytest.raises(KairosError) as raised:
                workspace_for(parent)
            assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        current_principal.reset(token)


def test_no_principal_is_unauthenticated() -> None:
    token = _as(None)
    try:
        for call in (
            principal,
            require_admin,
            lambda: workspace_for("workspaces/acme"),
            lambda: check_workspace("a", "b"),
        ):
            with pytest.raises(KairosError) as raised:
                call()
            assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        current_principal.reset(token)


async def test_authenticator_directly() -> None:
    key = secrets.new_api_key("k9")
    record = feed_pb2.ApiKeyRecord(name="workspaces/acme/apiKeys/k9", digest=secrets.digest(key))

    async def lookup(key_id: str) -> feed_pb2.ApiKeyRecord | None:
        return record if key_id == "k9" else None

    without_admin = Authenticator(lookup)
    assert await without_admin.authenticate(f"Bearer {key}") == Principal("acme", "workspaces/acme/apiKeys/k9")
    assert await without_admin.authenticate(f"BEARER  {key} ") == Principal("acme", "workspaces/acme/apiKeys/k9")
    # no admin key configured: an empty bearer can never be the admin
    for presented in (None, "", "Bearer ", "Bearer x"):
        with pytest.raises(KairosError) as raised:
            await without_admin.authenticate(presented)
        assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
    with_admin = Authenticator(lookup, "the-admin-key")
    assert (await with_admin.authenticate("Bearer the-admin-key")).is_admin
    with pytest.raises(KairosError):
        await with_admin.authenticate("Bearer the-admin-keY")
