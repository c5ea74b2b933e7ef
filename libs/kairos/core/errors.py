"""Domain errors that carry the canonical gRPC code, an ErrorInfo reason and field violations.

Services raise these; the error interceptor turns them into a rich `google.rpc.Status` and the HTTP layer
into a JSON body, so handlers never build status objects themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

ERROR_DOMAIN = "kairos.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: `field` is the dot path in the request (e.g. `trigger.source.schedule.timezone`)."""

    field: str
    description: str


@dataclass
class KairosError(Exception):
    """An error a caller can act on. `reason` is UPPER_SNAKE_CASE and stable; `message` is for humans."""

    code: grpc.StatusCode
    reason: str
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def invalid_argument(reason: str, field_path: str, description: str) -> KairosError:
    """INVALID_ARGUMENT naming one field."""
    return KairosError(
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        f"{field_path}: {description}",
        [FieldViolation(field_path, description)],
    )


def not_found(resource_name: str) -> KairosError:
    return KairosError(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", f"{resource_name} not found")


def unauthenticated(message: str) -> KairosError:
    return KairosError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", message)


def permission_denied(message: str) -> KairosError:
    return KairosError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", message)


def aborted(reason: str, message: str) -> KairosError:
    return KairosError(grpc.StatusCode.ABORTED, reason, message)


def failed_precondition(reason: str, message: str) -> KairosError:
    return KairosError(grpc.StatusCode.FAILED_PRECONDITION, reason, message)


def unavailable(reason: str, message: str) -> KairosError:
    return KairosError(grpc.StatusCode.UNAVAILABLE, reason, message)
