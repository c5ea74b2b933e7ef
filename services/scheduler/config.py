"""Scheduler settings read from `KAIROS_SCHEDULER_*` environment variables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kairos.core.config import ConfigError
from kairos.core.names import new_id

_REPLICA_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


@dataclass(frozen=True)
class SchedulerConfig:
    """`replica_id`: how this replica names itself in leases and heartbeats (e.g. the pod name); default a
    new id per start."""

    replica_id: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SchedulerConfig:
        env = os.environ if env is None else env
        replica_id = env.get("KAIROS_SCHEDULER_REPLICA_ID", "").strip() or new_id("sched")
        if not _REPLICA_ID.fullmatch(replica_id):
            raise ConfigError(
                f"KAIROS_SCHEDULER_REPLICA_ID must be 1-64 letters, digits, '-' or '_', got {replica_id!r}"
            )
        return cls(replica_id=replica_id)
