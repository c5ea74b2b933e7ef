"""ServiceConfig.from_env and the NATS URL setting: defaults, and start-up failures that name the offending variable
or server."""

from __future__ import annotations

import pytest

from kairos.core.config import ConfigError, ServiceConfig, default_database_url, env_choice, env_int, env_str
from kairos.core.messaging import NatsConnectError, nats_servers


def test_defaults_from_an_empty_environment() -> None:
    config = ServiceConfig.from_env({})
    assert config == ServiceConfig(
        nats_url="nats://127.0.0.1:4222",
        grpc_host="127.0.0.1",
        grpc_port=50051,
        log_format="json",
        log_level="info",
        database_url=default_database_url(),
        admin_key="",
        secret_key="",
        http_host="127.0.0.1",
        http_port=8080,
        public_url="",
        run_retention=1000,
        python_runner_modules=("kairos.agents",),
    )
    assert config.database_url.startswith("sqlite+aiosqlite:///")
    assert config.database_url.endswith("kairos.db")


def test_blank_values_fall_back_to_defaults() -> None:
    config = ServiceConfig.from_env({"KAIROS_GRPC_PORT": "  ", "KAIROS_LOG_FORMAT": "", "KAIROS_NATS_URL": " "})
    assert config.grpc_port == 50051
    assert config.log_format == "json"
    assert config.nats_url == "nats://127.0.0.1:4222"


def test_values_are_read_and_normalised() -> None:
    config = ServiceConfig.from_env(
        {
            "KAIROS_NATS_URL": " nats://nats:4222 ",
            "KAIROS_GRPC_HOST": "0.0.0.0",
            "KAIROS_GRPC_PORT": "0",
            "KAIROS_LOG_FORMAT": "CONSOLE",
            "KAIROS_LOG_LEVEL": "Debug",
            "KAIROS_DATABASE_URL": "postgresql+asyncpg://kairos@db/kairos",
            "KAIROS_ADMIN_KEY": "  s3cret  ",
            "KAIROS_HTTP_PORT": "65535",
            "KAIROS_PUBLIC_URL": "https://kairos.example.com/",
            "KAIROS_RUN_RETENTION": "1",
            "KAIROS_NATS_REPLICAS": "3",
            "KAIROS_HTTP_REQUEST_TIMEOUT_S": "30",
        }
    )
    assert config.nats_url == "nats://nats:4222"
    assert config.grpc_host == "0.0.0.0"
    assert config.grpc_port == 0
    assert config.log_format == "console"
    assert config.log_level == "debug"
    assert config.database_url == "postgresql+asyncpg://kairos@db/kairos"
    assert config.admin_key == "s3cret"
    assert config.http_port == 65535
    assert config.public_url == "https://kairos.example.com"
    assert config.run_retention == 1
    assert config.nats_replicas == 3
    assert config.http_request_timeout_s == 30


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_GRPC_PORT", "6000")
    monkeypatch.setenv("KAIROS_LOG_FORMAT", "console")
    config = ServiceConfig.from_env()
    assert config.grpc_port == 6000
    assert config.log_format == "console"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KAIROS_GRPC_PORT", "fifty"),
        ("KAIROS_GRPC_PORT", "50051.0"),
        ("KAIROS_GRPC_PORT", "0x50"),
        ("KAIROS_GRPC_PORT", "65536"),
        ("KAIROS_GRPC_PORT", "-1"),
        ("KAIROS_HTTP_PORT", "http"),
        ("KAIROS_HTTP_PORT", "70000"),
        ("KAIROS_RUN_RETENTION", "0"),
        ("KAIROS_RUN_RETENTION", "many"),
        ("KAIROS_LOG_FORMAT", "xml"),
        ("KAIROS_LOG_FORMAT", "text"),
        ("KAIROS_LOG_LEVEL", "verbose"),
        ("KAIROS_NATS_REPLICAS", "0"),
        ("KAIROS_NATS_REPLICAS", "6"),
        ("KAIROS_HTTP_REQUEST_TIMEOUT_S", "0"),
    ],
)
def test_malformed_values_raise_config_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ServiceConfig.from_env({variable: value})
    assert variable in str(raised.value)
    assert repr(value) in str(raised.value) or value in str(raised.value)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql+asyncpg://kairos@db/kairos", "postgresql+asyncpg://kairos@db/kairos"),
        ("postgresql://kairos:pw@db:5432/kairos", "postgresql+asyncpg://kairos:pw@db:5432/kairos"),
        ("postgres://kairos@db/kairos?ssl=require", "postgresql+asyncpg://kairos@db/kairos?ssl=require"),
        ("PostgreSQL+AsyncPG://kairos@db/kairos", "postgresql+asyncpg://kairos@db/kairos"),
        ("sqlite:///data/kairos.db", "sqlite+aiosqlite:///data/kairos.db"),
        ("sqlite+aiosqlite:////abs/kairos.db", "sqlite+aiosqlite:////abs/kairos.db"),
    ],
)
def test_database_urls_get_the_async_driver_kairos_installs(given: str, used: str) -> None:
    assert ServiceConfig.from_env({"KAIROS_DATABASE_URL": given}).database_url == used


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("kairos.db", "must be a database URL such as sqlite+aiosqlite://"),
        ("://pw@db", "must be a database URL"),
        ("mysql://kairos:hunter2@db/kairos", "runs on SQLite or PostgreSQL, not 'mysql'"),
        (
            "postgresql+psycopg://kairos:hunter2@db/kairos",
            "use the asyncpg driver (postgresql+asyncpg://), not 'psycopg'",
        ),
        ("sqlite+pysqlite:///kairos.db", "use the aiosqlite driver (sqlite+aiosqlite://), not 'pysqlite'"),
    ],
)
def test_unusable_database_urls_are_named_without_their_password(given: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ServiceConfig.from_env({"KAIROS_DATABASE_URL": given})
    assert "KAIROS_DATABASE_URL" in str(raised.value)
    assert problem in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_out_of_range_message_states_the_bounds() -> None:
    with pytest.raises(ConfigError, match=r"KAIROS_GRPC_PORT must be at least 0 and at most 65535, got 65536"):
        ServiceConfig.from_env({"KAIROS_GRPC_PORT": "65536"})
    with pytest.raises(ConfigError, match=r"KAIROS_LOG_FORMAT must be one of json, console"):
        ServiceConfig.from_env({"KAIROS_LOG_FORMAT": "xml"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("kairos.agents", ("kairos.agents",)),
        ("my.agents,other.agents", ("my.agents", "other.agents")),
        (" my.agents , other.agents ,", ("my.agents", "other.agents")),
        (",,a,,b,,", ("a", "b")),
        ("", ("kairos.agents",)),
        ("   ", ("kairos.agents",)),
    ],
)
def test_python_runner_modules_parsing(raw: str, expected: tuple[str, ...]) -> None:
    assert ServiceConfig.from_env({"KAIROS_PYTHON_RUNNER_MODULES": raw}).python_runner_modules == expected


def test_python_runner_modules_of_only_commas_is_empty() -> None:
    assert ServiceConfig.from_env({"KAIROS_PYTHON_RUNNER_MODULES": ", ,"}).python_runner_modules == ()


def test_env_helpers() -> None:
    with pytest.raises(ConfigError, match="KAIROS_REQUIRED is required"):
        env_str({}, "KAIROS_REQUIRED")
    assert env_str({"X": " v "}, "X") == "v"
    assert env_int({"N": "7"}, "N", 1, minimum=5, maximum=9) == 7
    with pytest.raises(ConfigError, match="N must be at least 5"):
        env_int({"N": "4"}, "N", 1, minimum=5)
    assert env_choice({"C": " B "}, "C", "a", ("a", "b")) == "b"


@pytest.mark.parametrize(
    ("setting", "servers"),
    [
        ("nats://127.0.0.1:4222", ["nats://127.0.0.1:4222"]),
        ("127.0.0.1:4222", ["127.0.0.1:4222"]),
        ("nats://a:4222, nats://b:4222,,tls://c", ["nats://a:4222", "nats://b:4222", "tls://c"]),
        ("nats://kairos:pw@nats:4222", ["nats://kairos:pw@nats:4222"]),
    ],
)
def test_nats_url_settings_name_one_server_or_a_cluster(setting: str, servers: list[str]) -> None:
    assert nats_servers(setting) == servers


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        (" , ", "no NATS server in the URL"),
        (
            "http://kairos:hunter2@127.0.0.1:4222",
            "http://127.0.0.1:4222 is not a NATS server URL: http:// is not a NATS",
        ),
        ("nats://127.0.0.1:notaport", "nats://127.0.0.1:notaport is not a NATS server URL: its port is not a number"),
        ("nats://kairos:hunter2@127.0.0.1:70000", "nats://127.0.0.1:70000 is not a NATS server URL: its port"),
        ("nats://a:4222,nats://:4222", "nats://:4222 is not a NATS server URL: it names no host"),
    ],
)
def test_a_nats_url_setting_that_is_not_one_is_named_without_its_credentials(setting: str, problem: str) -> None:
    with pytest.raises(NatsConnectError) as raised:
        nats_servers(setting)
    assert problem in str(raised.value)
    assert "hunter2" not in str(raised.value)
