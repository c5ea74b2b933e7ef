"""`KairosClient`: async gRPC stubs for every Kairos service, authenticated with an API key.

In `kairos dev` every service answers on one address. In production each service may have its own address
(`targets={"runs": "executor:50051"}`), or one gRPC-aware proxy routes by service name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kairos.v1 import (
    event_service_pb2_grpc,
    run_service_pb2_grpc,
    scheduler_service_pb2_grpc,
    trigger_service_pb2_grpc,
    webhook_service_pb2_grpc,
    workspace_service_pb2_grpc,
)

DEFAULT_TARGET = "127.0.0.1:50051"
SERVICES = ("triggers", "webhooks", "workspaces", "runs", "events", "scheduler")


class _BearerAuth(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, api_key: str) -> None:
        self._metadata = (("authorization", f"Bearer {api_key}"),)

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = tuple(client_call_details.metadata or ()) + self._metadata
        details = client_call_details._replace(metadata=metadata)
        return await continuation(details, request)


class KairosClient:
    """Use as `async with KairosClient(target, api_key) as kairos: await kairos.triggers.GetTrigger(...)`."""

    def __init__(self, target: str = DEFAULT_TARGET, api_key: str = "", *, targets: dict[str, str] | None = None):
        unknown = set(targets or {}) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown service(s) {sorted(unknown)}; choose from {', '.join(SERVICES)}")
        interceptors = [_BearerAuth(api_key)] if api_key else []
        self._channels: dict[str, grpc.aio.Channel] = {}

        def channel(service: str) -> grpc.aio.Channel:
            address = (targets or {}).get(service, target)
            if address not in self._channels:
                self._channels[address] = grpc.aio.insecure_channel(address, interceptors=interceptors)
            return self._channels[address]

        self.triggers = trigger_service_pb2_grpc.TriggerServiceStub(channel("triggers"))
        self.webhooks = webhook_service_pb2_grpc.WebhookServiceStub(channel("webhooks"))
        self.workspaces = workspace_service_pb2_grpc.WorkspaceServiceStub(channel("workspaces"))
        self.runs = run_service_pb2_grpc.RunServiceStub(channel("runs"))
        self.events = event_service_pb2_grpc.EventServiceStub(channel("events"))
        self.scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(channel("scheduler"))

    @classmethod
    def from_env(cls, default_target: str = DEFAULT_TARGET) -> KairosClient:
        """KAIROS_ADDRESS (host:port) and KAIROS_API_KEY."""
        return cls(os.environ.get("KAIROS_ADDRESS", default_target), os.environ.get("KAIROS_API_KEY", ""))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def __aenter__(self) -> KairosClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


@dataclass
class RpcErrorDetails:
    """What a failed call said: the code, the ErrorInfo reason and metadata, and the bad fields."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: dict[str, str] = field(default_factory=dict)


def error_details(error: grpc.aio.AioRpcError) -> RpcErrorDetails:
    details = RpcErrorDetails(error.code(), error.details() or "")
    status = rpc_status.from_call(error)
    for packed in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        if packed.Unpack(info):
            details.reason, details.metadata = info.reason, dict(info.metadata)
        elif packed.Unpack(bad_request):
            details.field_violations = {v.field: v.description for v in bad_request.field_violations}
    return details
