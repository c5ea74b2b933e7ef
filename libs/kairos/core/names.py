"""Resource ids and names (`workspaces/{workspace}/triggers/{trigger}`, ...), parsed strictly."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ulid import ULID

from kairos.core.errors import invalid_argument

WORKSPACE_ID = re.compile(r"^[a-z][a-z0-9-]{1,62}\Z")
RESOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
# A platform event type, as event triggers name it and events are published with: anything else can fire nothing.
EVENT_TYPE = re.compile(r"^(?=.{1,200}\Z)[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,7}\Z")
EVENT_TYPE_RULE = "must be dot-separated lowercase words such as thread.member_joined (at most 8 words, 200 characters)"
CALLERS_WORKSPACE = "workspaces/-"


def new_id(prefix: str) -> str:
    """A sortable unique id such as `t_01jd5x...`."""
    return f"{prefix}_{str(ULID()).lower()}"


@dataclass(frozen=True)
class TriggerName:
    workspace: str
    trigger: str

    def __str__(self) -> str:
        return f"workspaces/{self.workspace}/triggers/{self.trigger}"


@dataclass(frozen=True)
class WebhookName:
    workspace: str
    webhook: str

    def __str__(self) -> str:
        return f"workspaces/{self.workspace}/webhooks/{self.webhook}"


@dataclass(frozen=True)
class RunName:
    workspace: str
    trigger: str
    run: str

    def __str__(self) -> str:
        return f"workspaces/{self.workspace}/triggers/{self.trigger}/runs/{self.run}"


def _segments(name: str, field: str, collections: tuple[str, ...]) -> list[str]:
    parts = name.split("/")
    expected = " / ".join(f"{c}/{{{c[:-1]}}}" for c in collections)
    if len(parts) != 2 * len(collections) or any(parts[2 * i] != c for i, c in enumerate(collections)):
        raise invalid_argument("INVALID_RESOURCE_NAME", field, f"must look like {expected}, got {name!r}")
    ids = parts[1::2]
    if not WORKSPACE_ID.match(ids[0]):
        raise invalid_argument("INVALID_RESOURCE_NAME", field, f"invalid workspace id {ids[0]!r}")
    for resource_id in ids[1:]:
        if not RESOURCE_ID.match(resource_id):
            raise invalid_argument("INVALID_RESOURCE_NAME", field, f"invalid resource id {resource_id!r}")
    return ids


def parse_workspace(name: str, field: str = "parent") -> str:
    return _segments(name, field, ("workspaces",))[0]


def parse_trigger(name: str, field: str = "name") -> TriggerName:
    return TriggerName(*_segments(name, field, ("workspaces", "triggers")))


def parse_webhook(name: str, field: str = "name") -> WebhookName:
    return WebhookName(*_segments(name, field, ("workspaces", "webhooks")))


def parse_run(name: str, field: str = "name") -> RunName:
    return RunName(*_segments(name, field, ("workspaces", "triggers", "runs")))
