"""Who is calling: API keys (one workspace each) and the operator's admin key, kept in a contextvar per RPC."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from kairos.core import secrets
from kairos.core.errors import not_found, permission_denied, unauthenticated
from kairos.core.names import CALLERS_WORKSPACE, parse_workspace
from kairos.v1 import feed_pb2

ApiKeyLookup = Callable[[str], Awaitable[feed_pb2.ApiKeyRecord | None]]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. `workspace` is None for the admin, who may act in any workspace."""

    workspace: str | None
    key_name: str

    @property
    def is_admin(self) -> bool:
        return self.workspace is None


current_principal: ContextVar[Principal | None] = ContextVar("kairos_principal", default=None)


def principal() -> Principal:
    caller = current_principal.get()
    if caller is None:
        raise unauthenticated("no credentials for this call")
    return caller


def require_admin() -> Principal:
    caller = principal()
    if not caller.is_admin:
        raise permission_denied("this call needs the operator's admin key (KAIROS_ADMIN_KEY)")
    return caller


def workspace_for(parent: str, field: str = "parent") -> str:
    """The workspace a request addresses; `workspaces/-` or empty means the caller's own.

    Another workspace is NOT_FOUND, exactly as a workspace that does not exist: a key never learns what
    other tenants have.
    """
    caller = principal()
    if not parent or parent == CALLERS_WORKSPACE:
        if caller.workspace is None:
            raise unauthenticated("the admin key must name the workspace explicitly")
        return caller.workspace
    workspace = parse_workspace(parent, field)
    check_workspace(workspace, f"workspaces/{workspace}")
    return workspace


def check_workspace(workspace: str, resource_name: str) -> None:
    """NOT_FOUND unless the caller may see resources of `workspace`."""
    caller = principal()
    if caller.workspace is not None and caller.workspace != workspace:
        raise not_found(resource_name)


class Authenticator:
    """Turns an `authorization: Bearer ...` value into a Principal, in constant time per comparison."""

    def __init__(self, lookup: ApiKeyLookup, admin_key: str = "") -> None:
        self._lookup = lookup
        self._admin_digest = secrets.digest(admin_key) if admin_key else b""

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise unauthenticated("authorization must be 'Bearer <api key>'")
        if self._admin_digest and hmac.compare_digest(secrets.digest(key), self._admin_digest):
            return Principal(workspace=None, key_name="admin")
        key_id = secrets.split_api_key(key)
        record = await self._lookup(key_id) if key_id else None
        if record is None or not secrets.matches(key, record.digest):
            raise unauthenticated("invalid API key")
        if record.HasField("expire_time") and record.expire_time.ToDatetime(UTC) <= datetime.now(UTC):
            raise unauthenticated("API key expired")
        return Principal(workspace=record.name.split("/")[1], key_name=record.name)
