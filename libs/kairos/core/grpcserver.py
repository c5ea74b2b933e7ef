"""Builds the gRPC server every service runs: interceptors, grpc.health.v1 and server reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kairos.core.auth import Authenticator
from kairos.core.interceptors import standard_interceptors
from kairos.core.startup_errors import ListenError


class GrpcServer:
    """One gRPC server; services register into it, then it starts and reports SERVING for each."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.server = grpc.aio.server(
            interceptors=standard_interceptors(authenticator),
            options=[("grpc.so_reuseport", 0)],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = []
        self.port = 0

    def add(self, service_name: str) -> None:
        """Records a fully qualified service name (e.g. `kairos.v1.TriggerService`) for health and reflection."""
        self._service_names.append(service_name)

    async def start(self, host: str, port: int) -> int:
        names = [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # grpcio's "Failed to bind" (older releases returned port 0 instead)
            self.port = 0
        if self.port == 0:
            raise ListenError(
                f"gRPC cannot listen on {host}:{port} (KAIROS_GRPC_HOST, KAIROS_GRPC_PORT): the port is in use, or "
                "the host is not an address of this machine"
            )
        await self.server.start()
        for name in [*self._service_names, ""]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
