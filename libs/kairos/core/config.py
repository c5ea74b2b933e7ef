"""Configuration read from `KAIROS_*` environment variables, failing at start-up with the variable's name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path(".kairos")


class ConfigError(Exception):
    """A missing or malformed environment variable; the message names it."""


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(f"{name} is required but not set")
    return default


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name} must be at least {minimum}{upper}, got {value}")
    return value


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def default_database_url(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'kairos.db'}"


# The async driver Kairos installs for each database it runs on.
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
DATABASE_URL_EXAMPLES = "sqlite+aiosqlite:///.kairos/kairos.db or postgresql+asyncpg://user@host/kairos"


def _database_url(env: Mapping[str, str]) -> str:
    """KAIROS_DATABASE_URL: SQLite or PostgreSQL through the async driver Kairos installs, which a URL naming only
    its database gets (`postgres://...`, as hosting providers hand it out). Errors never repeat the URL, which may
    hold a password."""
    url = env_str(env, "KAIROS_DATABASE_URL", default_database_url())
    scheme, separator, rest = url.partition("://")
    if not separator or not scheme:
        raise ConfigError(f"KAIROS_DATABASE_URL must be a database URL such as {DATABASE_URL_EXAMPLES}")
    database, _, driver = scheme.lower().partition("+")
    database = "postgresql" if database == "postgres" else database
    wanted = ASYNC_DRIVERS.get(database)
    if wanted is None:
        raise ConfigError(
            f"KAIROS_DATABASE_URL: Kairos runs on SQLite or PostgreSQL, not {database!r} (e.g. {DATABASE_URL_EXAMPLES})"
        )
    if driver and driver != wanted:
        raise ConfigError(
            f"KAIROS_DATABASE_URL: use the {wanted} driver ({database}+{wanted}://), not {driver!r}: "
            "Kairos reaches its database asynchronously, through the drivers it installs"
        )
    return f"{database}+{wanted}://{rest}"


def _secret_key(env: Mapping[str, str]) -> str:
    """KAIROS_SECRET_KEY: encrypts signing secrets at rest; optional, but at least 32 characters when set."""
    value = env.get("KAIROS_SECRET_KEY", "").strip()
    if value and len(value) < 32:
        raise ConfigError(f"KAIROS_SECRET_KEY must be at least 32 characters, got {len(value)}")
    return value


# Seconds an HTTP client has to send a whole request, from its first byte (or from connecting).
DEFAULT_HTTP_REQUEST_TIMEOUT_S = 15


@dataclass(frozen=True)
class ServiceConfig:
    """Settings every service shares. Service-specific settings live beside each service."""

    nats_url: str
    grpc_host: str
    grpc_port: int
    log_format: str
    log_level: str
    database_url: str
    admin_key: str
    secret_key: str
    http_host: str
    http_port: int
    public_url: str
    run_retention: int
    python_runner_modules: tuple[str, ...]
    webhook_tolerance_s: int = 300
    webhook_rate_per_s: float = 50.0
    webhook_burst: int = 100
    workspace_max_concurrent_runs: int = 100
    executor_ack_wait_s: int = 30
    notify_signing_secret: str = ""
    nats_replicas: int = 1
    http_request_timeout_s: int = DEFAULT_HTTP_REQUEST_TIMEOUT_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        env = os.environ if env is None else env
        return cls(
            nats_url=env_str(env, "KAIROS_NATS_URL", "nats://127.0.0.1:4222"),
            grpc_host=env_str(env, "KAIROS_GRPC_HOST", "127.0.0.1"),
            grpc_port=env_int(env, "KAIROS_GRPC_PORT", 50051, maximum=65535),
            log_format=env_choice(env, "KAIROS_LOG_FORMAT", "json", ("json", "console")),
            log_level=env_choice(env, "KAIROS_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            database_url=_database_url(env),
            admin_key=env.get("KAIROS_ADMIN_KEY", "").strip(),
            secret_key=_secret_key(env),
            http_host=env_str(env, "KAIROS_HTTP_HOST", "127.0.0.1"),
            http_port=env_int(env, "KAIROS_HTTP_PORT", 8080, maximum=65535),
            public_url=env.get("KAIROS_PUBLIC_URL", "").strip().rstrip("/"),
            run_retention=env_int(env, "KAIROS_RUN_RETENTION", 1000, minimum=1),
            python_runner_modules=tuple(
                module.strip()
                for module in env_str(env, "KAIROS_PYTHON_RUNNER_MODULES", "kairos.agents").split(",")
                if module.strip()
            ),
            webhook_tolerance_s=env_int(env, "KAIROS_WEBHOOK_TOLERANCE_S", 300, minimum=1, maximum=86400),
            webhook_rate_per_s=float(env_int(env, "KAIROS_WEBHOOK_RATE_PER_S", 50, minimum=1)),
            webhook_burst=env_int(env, "KAIROS_WEBHOOK_BURST", 100, minimum=1),
            workspace_max_concurrent_runs=env_int(env, "KAIROS_WORKSPACE_MAX_CONCURRENT_RUNS", 100, minimum=1),
            executor_ack_wait_s=env_int(env, "KAIROS_EXECUTOR_ACK_WAIT_S", 30, minimum=1, maximum=3600),
            notify_signing_secret=env.get("KAIROS_NOTIFY_SIGNING_SECRET", "").strip(),
            nats_replicas=env_int(env, "KAIROS_NATS_REPLICAS", 1, minimum=1, maximum=5),
            http_request_timeout_s=env_int(
                env, "KAIROS_HTTP_REQUEST_TIMEOUT_S", DEFAULT_HTTP_REQUEST_TIMEOUT_S, minimum=1, maximum=3600
            ),
        )
