"""The gRPC server interceptor: request context and logging, error mapping, and API-key authentication.

It wraps the unary handler so that handlers never repeat these concerns. Health and reflection are public.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from kairos.core.auth import Authenticator, current_principal
from kairos.core.errors import ERROR_DOMAIN, KairosError
from kairos.core.names import new_id

log = structlog.get_logger(__name__)

PUBLIC_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _metadata(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item in details.invocation_metadata or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else item.value.decode()
    return None


def _wrap_unary(handler: grpc.RpcMethodHandler | None, wrap: Callable[[Behavior], Behavior]):
    if handler is None or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        wrap(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def rich_status(error: KairosError) -> grpc.Status:
    """The google.rpc.Status for an error: one ErrorInfo and, for bad fields, a BadRequest."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))
    status.details.append(info)
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        status.details.append(packed)
    return rpc_status.to_status(status)


class StandardInterceptor(grpc.aio.ServerInterceptor):
    """Context and logging, then error mapping (so auth failures map too), then auth, in one wrapper per call:
    each interceptor hop costs about 60 us of a call that takes about 400 us in grpc.aio itself, so one hop
    instead of three is a measurable share of a fast RPC."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        request_id = _metadata(handler_call_details, "x-request-id") or new_id("req")
        public = method.startswith(PUBLIC_SERVICES)
        authorization = None if public else _metadata(handler_call_details, "authorization")
        authenticator = self._authenticator

        def wrap(behavior: Behavior) -> Behavior:
            async def call(request, context):
                structlog.contextvars.bind_contextvars(request_id=request_id, rpc=method)
                started = time.perf_counter()
                token = None
                try:
                    if not public:
                        caller = await authenticator.authenticate(authorization)
                        token = current_principal.set(caller)
                        structlog.contextvars.bind_contextvars(caller=caller.key_name)
                    return await behavior(request, context)
                except KairosError as error:
                    status = rich_status(error)
                    await context.abort(status.code, status.details, status.trailing_metadata)
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("unhandled error")
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                finally:
                    if token is not None:
                        current_principal.reset(token)
                    code = context.code() or grpc.StatusCode.OK
                    (log.debug if code == grpc.StatusCode.OK else log.info)(
                        "rpc",
                        code=getattr(code, "name", str(code)),
                        ms=round((time.perf_counter() - started) * 1000, 2),
                    )
                    structlog.contextvars.clear_contextvars()

            return call

        return _wrap_unary(handler, wrap)


def standard_interceptors(authenticator: Authenticator) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors every Kairos gRPC server runs."""
    return [StandardInterceptor(authenticator)]
