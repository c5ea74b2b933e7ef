"""The demo agent: echoes what it was given, so a new user can watch a fire become a completed run."""

from __future__ import annotations

from typing import Any


def echo(envelope: dict[str, Any]) -> dict[str, Any]:
    """Returns the run's input and payload unchanged, tagged with the fire it came from."""
    return {
        "echo": envelope.get("input", {}),
        "payload": envelope.get("payload"),
        "fire_id": envelope.get("fire_id"),
        "trigger_type": envelope.get("trigger_type"),
    }
