"""Static checks of the container deployment: docker-compose.yml, the Dockerfile and .dockerignore.

Docker is not needed: the files are parsed, and the health-check one-liners are run on the host against a
local grpc.health.v1 server (and, for ingress, a local `/healthz`), so a typo in any of them fails here.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

KAIROS_SERVICES = ("registry", "scheduler", "ingress", "executor")
INFRA_SERVICES = ("nats", "postgres")
SHARED_ANCHOR = "x-kairos-service"
NATS_CONFIG_TARGET = "/etc/nats/nats-server.conf"


# --- helpers ---------------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _kairos_services() -> dict[str, dict[str, Any]]:
    """Every compose service that is not third-party infrastructure is a Kairos service."""
    return {name: svc for name, svc in _services().items() if name not in INFRA_SERVICES}


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's `environment`, in either compose form (mapping or `KEY=value` list)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): None if v is None else str(v) for k, v in env.items()}
    out: dict[str, str | None] = {}
    for item in env:
        key, sep, value = str(item).partition("=")
        out[key] = value if sep else None
    return out


def _service_modules() -> dict[str, str]:
    from kairos.cli import SERVICE_MODULES

    return SERVICE_MODULES


def _pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


@dataclass
class Instruction:
    keyword: str
    args: str


def _dockerfile_stages() -> list[list[Instruction]]:
    """Dockerfile instructions (continuations joined, comments dropped), one list per FROM stage."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends with a line continuation"
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"instruction before the first FROM: {line!r}"
        stages[-1].append(instruction)
    return stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"expected exec (JSON) form, got {args!r}"
    assert all(isinstance(item, str) for item in value), args
    return value


def _ignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _is_ignored(path: str, patterns: list[str]) -> bool:
    path = path.strip("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatch(path, c) or path.startswith(c + "/") for c in candidates):
            ignored = not negate
    return ignored


# --- services and commands -------------------------------------------------------------------------------


def test_all_services_are_defined() -> None:
    services = _services()
    for name in INFRA_SERVICES:
        assert name in services, f"infrastructure service {name!r} missing"
    assert sorted(_kairos_services()) == sorted(KAIROS_SERVICES)


def test_compose_covers_every_cli_service() -> None:
    assert sorted(_kairos_services()) == sorted(_service_modules())


@pytest.mark.parametrize("name", KAIROS_SERVICES)
def test_service_command_serves_a_known_service(name: str) -> None:
    service_modules = _service_modules()
    command = _services()[name].get("command")
    assert isinstance(command, list), f"{name}: command must be an exec-form list, got {command!r}"
    assert len(command) == 2 and command[0] == "serve", f"{name}: command {command!r} is not serve <name>"
    served = command[1]
    assert served in service_modules, f"{name}: {served!r} is not one of {sorted(service_modules)}"
    assert served == name, f"compose service {name!r} runs `serve {served}`"
    module = service_modules[served]
    assert importlib.util.find_spec(module) is not None, f"{served}: module {module!r} not found"


# --- health checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KAIROS_SERVICES + INFRA_SERVICES)
def test_every_service_has_a_healthcheck(name: str) -> None:
    check = _services()[name].get("healthcheck")
    assert isinstance(check, dict), f"{name}: no healthcheck"
    assert not check.get("disable", False), f"{name}: healthcheck disabled"
    test = check.get("test")
    assert isinstance(test, list) and len(test) >= 2, f"{name}: healthcheck test {test!r}"
    assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test {test!r}"


@pytest.mark.parametrize("name", KAIROS_SERVICES)
def test_kairos_healthcheck_is_a_grpc_health_one_liner(name: str) -> None:
    test = _services()[name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], f"{name}: {test!r}"
    assert len(test) == 4, f"{name}: {test!r}"
    code = test[3]
    assert "$" not in code, f"{name}: compose would interpolate `$` in the health check"
    assert "grpc_health.v1" in code
    compile(code, f"<{name} healthcheck>", "exec")


def test_infra_healthchecks() -> None:
    services = _services()
    assert services["nats"]["healthcheck"]["test"] == [
        "CMD",
        "wget",
        "-qO-",
        "http://localhost:8222/healthz?js-enabled-only=true",
    ]
    assert services["nats"]["command"] == ["-c", NATS_CONFIG_TARGET, "-js", "-sd", "/data", "-m", "8222"]
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_nats_config_is_mounted_and_allows_large_payloads() -> None:
    from kairos.core.natsserver import MAX_PAYLOAD_BYTES, find_nats_server_binary

    mounts = [str(volume).split(":") for volume in _services()["nats"].get("volumes", [])]
    sources = [source for source, target, *mode in mounts if target == NATS_CONFIG_TARGET and mode == ["ro"]]
    assert len(sources) == 1, f"nats: mount a config file read-only at {NATS_CONFIG_TARGET}, got {mounts}"
    config = (COMPOSE_FILE.parent / sources[0]).resolve()
    assert config.is_file(), f"nats config {config} missing"
    settings = dict(
        line.split(":", 1) for line in config.read_text().splitlines() if line.strip() and not line.startswith("#")
    )
    max_payload = int(settings["max_payload"].strip())
    assert max_payload >= MAX_PAYLOAD_BYTES > 1 << 20, f"max_payload {max_payload} does not fit a 1 MiB body"
    checked = subprocess.run(
        [str(find_nats_server_binary()), "-c", str(config), "-t"], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, f"nats-server refuses {config}: {checked.stdout}{checked.stderr}"


class _HealthzHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = type(self).status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class _Endpoints:
    """A local grpc.health.v1 server and `/healthz` HTTP server standing in for a service container."""

    servicer: health.HealthServicer
    handler: type[_HealthzHandler]
    env: dict[str, str] = field(default_factory=dict)

    def set_grpc(self, status: int) -> None:
        self.servicer.set("", status)

    def set_http(self, code: int) -> None:
        self.handler.status = code


@pytest.fixture
def endpoints() -> Iterator[_Endpoints]:
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    grpc_port = server.add_insecure_port("localhost:0")
    server.start()
    handler = type("Handler", (_HealthzHandler,), {"status": 200})
    http_server = ThreadingHTTPServer(("localhost", 0), handler)
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    env = {"KAIROS_GRPC_PORT": str(grpc_port), "KAIROS_HTTP_PORT": str(http_server.server_address[1])}
    try:
        yield _Endpoints(servicer, handler, env)
    finally:
        http_server.shutdown()
        http_server.server_close()
        server.stop(None)


def _run_healthcheck(name: str, endpoints: _Endpoints) -> int:
    code = _services()[name]["healthcheck"]["test"][3]
    env = {**os.environ, **endpoints.env}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=60, check=False
    ).returncode


@pytest.mark.parametrize("name", KAIROS_SERVICES)
def test_kairos_healthcheck_passes_when_serving(name: str, endpoints: _Endpoints) -> None:
    endpoints.set_grpc(health_pb2.HealthCheckResponse.SERVING)
    assert _run_healthcheck(name, endpoints) == 0


@pytest.mark.parametrize("name", KAIROS_SERVICES)
def test_kairos_healthcheck_fails_when_not_serving(name: str, endpoints: _Endpoints) -> None:
    endpoints.set_grpc(health_pb2.HealthCheckResponse.NOT_SERVING)
    assert _run_healthcheck(name, endpoints) != 0


def test_ingress_healthcheck_checks_http_healthz(endpoints: _Endpoints) -> None:
    endpoints.set_grpc(health_pb2.HealthCheckResponse.SERVING)
    endpoints.set_http(503)
    assert _run_healthcheck("ingress", endpoints) != 0


# --- dependencies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KAIROS_SERVICES + INFRA_SERVICES)
def test_depends_on_waits_for_healthy_defined_services(name: str) -> None:
    services = _services()
    depends_on = services[name].get("depends_on", {})
    assert isinstance(depends_on, dict), f"{name}: depends_on must be a mapping with conditions"
    for dependency, spec in depends_on.items():
        assert dependency in services, f"{name}: depends on undefined service {dependency!r}"
        assert dependency != name, f"{name}: depends on itself"
        assert isinstance(spec, dict), f"{name} -> {dependency}: no condition"
        assert spec.get("condition") == "service_healthy", f"{name} -> {dependency}: {spec!r}"


@pytest.mark.parametrize("name", KAIROS_SERVICES)
def test_kairos_services_wait_for_nats_and_postgres(name: str) -> None:
    depends_on = _services()[name].get("depends_on", {})
    for dependency in INFRA_SERVICES:
        assert dependency in depends_on, f"{name}: does not wait for {dependency}"


# --- shared anchor and image -----------------------------------------------------------------------------


def _mapping_get(node: yaml.MappingNode, key: str) -> yaml.Node:
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node
    raise KeyError(key)


def test_kairos_services_merge_the_shared_anchor() -> None:
    # compose (not load) keeps the merge keys and aliases, so the anchor's use can be seen.
    root = yaml.compose(COMPOSE_FILE.read_text())
    assert isinstance(root, yaml.MappingNode)
    anchor = _mapping_get(root, SHARED_ANCHOR)
    services = _mapping_get(root, "services")
    for name in KAIROS_SERVICES:
        service = _mapping_get(services, name)
        merged = [value for key, value in service.value if key.tag == "tag:yaml.org,2002:merge"]
        assert any(value is anchor for value in merged), f"{name}: does not merge <<: *{SHARED_ANCHOR}"


def test_kairos_services_share_one_image_built_once() -> None:
    compose = _compose()
    image = compose[SHARED_ANCHOR]["image"]
    kairos = _kairos_services()
    images = {name: svc.get("image") for name, svc in kairos.items()}
    assert set(images.values()) == {image}, images
    builders = [name for name, svc in kairos.items() if "build" in svc]
    assert len(builders) == 1, f"the image must be built by exactly one service, got {builders}"
    build = kairos[builders[0]]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == DOCKERFILE


# --- environment -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KAIROS_SERVICES)
def test_kairos_environment_is_kairos_prefixed(name: str) -> None:
    env = _environment(_services()[name])
    assert env, f"{name}: no environment"
    for key in env:
        assert key.startswith("KAIROS_"), f"{name}: environment variable {key!r} is not KAIROS_*"


@pytest.mark.parametrize("name", KAIROS_SERVICES)
@pytest.mark.parametrize("variable", ["KAIROS_SECRET_KEY", "KAIROS_ADMIN_KEY"])
def test_secrets_are_required_from_the_host(name: str, variable: str) -> None:
    value = _environment(_services()[name]).get(variable)
    assert value is not None, f"{name}: {variable} not set"
    assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", value), f"{name}: {variable}={value!r}"


@pytest.mark.parametrize("name", KAIROS_SERVICES)
def test_connection_urls_point_at_compose_services(name: str) -> None:
    services = _services()
    env = _environment(services[name])
    for variable, scheme in [("KAIROS_NATS_URL", "nats"), ("KAIROS_DATABASE_URL", "postgresql+asyncpg")]:
        url = urlsplit(env.get(variable) or "")
        assert url.scheme == scheme, f"{name}: {variable}={env.get(variable)!r}"
        assert url.hostname in services, f"{name}: {variable} host {url.hostname!r} is not a compose service"


def test_published_ports_match_the_service_ports() -> None:
    services = _services()

    def container_ports(name: str) -> set[str]:
        return {str(port).rsplit(":", 1)[-1].split("/")[0] for port in services[name].get("ports", [])}

    for name in KAIROS_SERVICES:
        env = _environment(services[name])
        assert env.get("KAIROS_GRPC_PORT") in container_ports(name), f"{name}: gRPC port not published"
        assert env.get("KAIROS_GRPC_HOST") == "0.0.0.0", f"{name}: gRPC must listen beyond the container"
    ingress_env = _environment(services["ingress"])
    assert ingress_env.get("KAIROS_HTTP_PORT", "8080") in container_ports("ingress")
    assert ingress_env.get("KAIROS_HTTP_HOST") == "0.0.0.0"


# --- Dockerfile ------------------------------------------------------------------------------------------


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    final = _dockerfile_stages()[-1]
    entrypoints = [i for i in final if i.keyword == "ENTRYPOINT"]
    assert entrypoints, "final stage has no ENTRYPOINT"
    entrypoint = _exec_form(entrypoints[-1].args)
    scripts = _pyproject()["project"]["scripts"]
    assert entrypoint == ["kairos"]
    assert entrypoint[0] in scripts, f"{entrypoint[0]!r} is not in [project.scripts] {sorted(scripts)}"
    module_name, _, attribute = scripts[entrypoint[0]].partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute)), scripts[entrypoint[0]]
    cmds = [i for i in final if i.keyword == "CMD"]
    assert not cmds or _exec_form(cmds[-1].args) == ["--help"]


def test_dockerfile_base_user_and_install() -> None:
    stages = _dockerfile_stages()
    for stage in stages:
        assert stage[0].args.split()[0] == "python:3.11-slim", stage[0].args
    final = stages[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert not [i for s in stages for i in s if i.keyword == "HEALTHCHECK"], "compose defines health checks"
    runs = " ".join(i.args for s in stages for i in s if i.keyword == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs), runs
    assert not re.search(r"pip install[^&;]*(-e|--editable)\b", runs), "install must be non-editable"


def test_dockerfile_copies_what_the_package_build_needs() -> None:
    copied: set[str] = set()
    for stage in _dockerfile_stages():
        for instruction in stage:
            if instruction.keyword == "COPY" and "--from" not in instruction.args:
                sources = instruction.args.split()[:-1]
                copied.update(src.strip("/").removeprefix("./") for src in sources)
    project = _pyproject()
    needed = {"pyproject.toml", project["project"]["readme"], "protos"}
    package_dirs = project["tool"]["setuptools"]["package-dir"].values()
    needed.update(Path(d).parts[0] for d in package_dirs)
    assert needed <= copied, f"Dockerfile does not copy {sorted(needed - copied)}"
    patterns = _ignore_patterns()
    for path in sorted(copied):
        assert (ROOT / path).exists(), f"Dockerfile copies missing {path!r}"
        assert not _is_ignored(path, patterns), f".dockerignore excludes {path!r}, which the image needs"


@pytest.mark.parametrize("path", [".venv", ".tools", ".kairos", ".git", "tests", "libs/kairos/__pycache__"])
def test_dockerignore_excludes_local_state(path: str) -> None:
    assert _is_ignored(path, _ignore_patterns()), f".dockerignore does not exclude {path!r}"
