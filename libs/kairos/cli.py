"""The `kairos` command: run the suite (`dev`, `serve`) and manage triggers, webhooks, runs and platform events from
a shell."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import gc
import importlib
import json
import os
import re
import secrets
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2
from google.protobuf.message import Message

from kairos.client import (
    KairosClient,
    equals,
    error_details,
    event_trigger,
    exists,
    one_of,
    schedule_trigger,
    webhook_trigger,
)
from kairos.core.config import DEFAULT_DATA_DIR, ConfigError, ServiceConfig, default_database_url
from kairos.core.log import configure_logging
from kairos.core.messaging import MessagingError, redacted_servers
from kairos.core.runtime import SERVICE_MODULES, Runtime, run_services
from kairos.core.startup_errors import StartupError
from kairos.v1 import (
    event_service_pb2,
    run_pb2,
    run_service_pb2,
    trigger_pb2,
    trigger_service_pb2,
    webhook_pb2,
    webhook_service_pb2,
    workspace_pb2,
    workspace_service_pb2,
)

ENDPOINTS_FILE = "endpoints.json"
DEV_LOCK_FILE = "dev.lock"
DEV_WORKSPACE = "dev"
DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
WEBHOOK_AUTH = {
    "bearer": webhook_pb2.WebhookAuthMode.WEBHOOK_AUTH_MODE_BEARER_TOKEN,
    "shared-secret": webhook_pb2.WebhookAuthMode.WEBHOOK_AUTH_MODE_SHARED_SECRET_HEADER,
    "standard-webhooks": webhook_pb2.WebhookAuthMode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS,
}

__all__ = ["SERVICE_MODULES", "build_parser", "main", "trigger_from_args"]


def _print(message: Message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))


def _duration(text: str) -> timedelta:
    match = DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 5m, 2h or 1d")
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


def _grace(text: str) -> duration_pb2.Duration:
    """A rotation's `--grace`, as the request's grace_period."""
    grace = duration_pb2.Duration()
    grace.FromTimedelta(_duration(text))
    return grace


def _instant(text: str) -> datetime:
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2026-12-01T09:00:00Z") from None
    if instant.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs an offset or Z")
    return instant.astimezone(UTC)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _filter_value(text: str):
    """A value of an event filter: JSON where it parses (42, true, "42"), else the text itself (sales)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _path_and_value(text: str) -> tuple[str, str]:
    path, equal_sign, value = text.partition("=")
    if not equal_sign or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not PATH=VALUE")
    return path, value


def _equals_condition(text: str) -> trigger_pb2.FieldCondition:
    path, value = _path_and_value(text)
    return equals(path, _filter_value(value))


def _one_of_condition(text: str) -> trigger_pb2.FieldCondition:
    path, values = _path_and_value(text)
    listed = _filter_value(values) if values.startswith("[") else [_filter_value(v) for v in values.split(",")]
    if not isinstance(listed, list):
        raise argparse.ArgumentTypeError(f"{values!r} is neither a JSON list nor values separated by commas")
    return one_of(path, listed)


def _free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _client_address(data_dir: Path) -> str:
    """KAIROS_ADDRESS, else the address a running `kairos dev` wrote, else the default."""
    if os.environ.get("KAIROS_ADDRESS"):
        return os.environ["KAIROS_ADDRESS"]
    endpoints = data_dir / ENDPOINTS_FILE
    if endpoints.exists():
        return json.loads(endpoints.read_text())["grpc"]
    return "127.0.0.1:50051"


def _webhooks_base(data_dir: Path) -> str:
    """KAIROS_WEBHOOKS_URL, else the base a running `kairos dev` wrote, else the default."""
    if os.environ.get("KAIROS_WEBHOOKS_URL"):
        return os.environ["KAIROS_WEBHOOKS_URL"].rstrip("/") + "/"
    endpoints = data_dir / ENDPOINTS_FILE
    if endpoints.exists():
        return json.loads(endpoints.read_text())["webhooks"]
    return "http://127.0.0.1:8080/hooks/"


# ---------------------------------------------------------------- running the suite


class DevAlreadyRunningError(StartupError):
    """Another `kairos dev` runs on the same data directory."""


@contextlib.contextmanager
def _dev_lock(data_dir: Path) -> Iterator[None]:
    """Holds `<data_dir>/dev.lock` for as long as this `kairos dev` runs, and removes its endpoints file when it
    stops. A second one on the same data would start a second nats-server on the same JetStream store and a second
    registry on the same SQLite file, and point the CLI at itself. The lock is the kernel's (flock): it goes with
    the process, however that ends."""
    with open(data_dir / DEV_LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            raise DevAlreadyRunningError(
                f"kairos dev is already running on {data_dir.resolve()}{f' (pid {holder})' if holder else ''}: "
                "stop it (Ctrl-C in its terminal), or give this one another --data-dir"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            (data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)


def _dev_secret_key(data_dir: Path) -> str:
    """The development sealing key, made once and kept beside the dev data (mode 0600)."""
    path = data_dir / "secret.key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _serve(args: argparse.Namespace) -> int:
    config = ServiceConfig.from_env()
    configure_logging(config.log_format, config.log_level)
    # Every service's speed depends on the event loop (tests/benchmarks/); uvloop comes with uvicorn[standard]
    # where the platform has it.
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # The service's modules, imported now, live as long as the process: frozen out of the collector's generations,
    # they are not walked again by the collections the short-lived objects of each request or run trigger.
    importlib.import_module(SERVICE_MODULES[args.service])
    gc.collect()
    gc.freeze()
    asyncio.run(run_services([args.service], config))
    return 0


async def _dev(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    configure_logging(env.get("KAIROS_LOG_FORMAT", "console"), env.get("KAIROS_LOG_LEVEL", "warning"))
    async with AsyncExitStack() as stack:
        stack.enter_context(_dev_lock(data_dir))
        if not env.get("KAIROS_NATS_URL"):
            from kairos.core.natsserver import EmbeddedNatsServer

            nats_server = EmbeddedNatsServer(data_dir / "nats")
            await nats_server.start()
            stack.push_async_callback(nats_server.stop)
            env["KAIROS_NATS_URL"] = nats_server.url
        env.setdefault("KAIROS_DATABASE_URL", default_database_url(data_dir))
        env.setdefault("KAIROS_SECRET_KEY", _dev_secret_key(data_dir))
        env.setdefault("KAIROS_GRPC_PORT", "50051" if _free(50051) else "0")
        env.setdefault("KAIROS_HTTP_PORT", "8080" if _free(8080) else "0")
        config = ServiceConfig.from_env(env)

        async def announce(runtime: Runtime) -> None:
            workspaces = runtime.extras["workspaces"]
            await workspaces.ensure_workspace(DEV_WORKSPACE, "Development")
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
            _, key = await workspaces.create_api_key(
                DEV_WORKSPACE, workspace_pb2.ApiKey(display_name=f"kairos dev {stamp}")
            )
            endpoints = {**runtime.endpoints, "nats": config.nats_url}
            (data_dir / ENDPOINTS_FILE).write_text(json.dumps(endpoints, indent=2) + "\n")
            print(
                "\nKairos is running (Ctrl-C stops it).\n"
                f"  gRPC       {endpoints['grpc']}   (grpcurl -plaintext {endpoints['grpc']} list)\n"
                f"  webhooks   {endpoints['webhooks']}<webhook id>\n"
                f"  NATS       {redacted_servers(config.nats_url)}\n"
                f"  data       {data_dir.resolve()}\n"
                f"  workspace  workspaces/{DEV_WORKSPACE}\n"
                "\nA development API key for this session (shown once, stored only as a hash):\n"
                f"  export KAIROS_API_KEY={key}\n",
                flush=True,
            )

        await run_services(list(SERVICE_MODULES), config, on_ready=announce)
    print("Kairos stopped.", flush=True)


# ---------------------------------------------------------------- client commands


def trigger_from_args(args: argparse.Namespace) -> trigger_pb2.Trigger:
    """The trigger `kairos triggers create` asks for."""
    action = {
        "agent": args.agent,
        "prompt": args.prompt,
        "input_template": args.input,
        "entry_point": args.entry_point,
        "http_url": args.http_url,
        "nats_subject": args.nats_subject,
        "owner": args.owner,
    }
    if args.webhook:
        trigger = webhook_trigger(display_name=args.name, **action)
    elif args.event:
        trigger = event_trigger(args.event, conditions=args.conditions or (), display_name=args.name, **action)
    else:
        trigger = schedule_trigger(
            cron=args.cron,
            every=args.every,
            at=args.at,
            timezone=args.timezone,
            display_name=args.name,
            **action,
        )
    if args.draft:
        trigger.state = trigger_pb2.TriggerState.TRIGGER_STATE_DRAFT
    return trigger


async def _call(args: argparse.Namespace) -> None:
    async with KairosClient(_client_address(Path(args.data_dir)), os.environ.get("KAIROS_API_KEY", "")) as kairos:
        await COMMANDS[args.command](kairos, args)


async def _triggers(kairos: KairosClient, args: argparse.Namespace) -> None:
    t, ts = kairos.triggers, trigger_service_pb2
    match args.action:
        case "create":
            request = ts.CreateTriggerRequest(trigger=trigger_from_args(args), request_id=args.request_id)
            trigger = (await t.CreateTrigger(request)).trigger
            if args.at is not None and args.at <= datetime.now(UTC):
                print(
                    f"kairos: note: --at {args.at.isoformat()} is past: this one-shot will never fire", file=sys.stderr
                )
            if args.output == "name":
                print(trigger.name)
            else:
                _print(trigger)
        case "list":
            _print(await t.ListTriggers(ts.ListTriggersRequest(page_size=args.page_size, page_token=args.page_token)))
        case "get":
            _print((await t.GetTrigger(ts.GetTriggerRequest(name=args.name))).trigger)
        case "pause":
            _print((await t.PauseTrigger(ts.PauseTriggerRequest(name=args.name, note=args.note))).trigger)
        case "resume":
            _print((await t.ResumeTrigger(ts.ResumeTriggerRequest(name=args.name, note=args.note))).trigger)
        case "delete":
            await t.DeleteTrigger(ts.DeleteTriggerRequest(name=args.name))
            print(f"deleted {args.name}")
        case "fire":
            overrides = struct_pb2.Struct()
            overrides.update(args.input or {})
            _print(await t.FireTrigger(ts.FireTriggerRequest(name=args.name, input=overrides)))
        case "upcoming":
            parent = args.name or "workspaces/-"
            _print(await t.ListUpcomingRuns(ts.ListUpcomingRunsRequest(parent=parent, page_size=args.count)))
        case "set-prompt":
            patch = trigger_pb2.Trigger(name=args.name, action=trigger_pb2.Action(prompt=args.prompt))
            mask = field_mask_pb2.FieldMask(paths=["action.prompt"])
            _print((await t.UpdateTrigger(ts.UpdateTriggerRequest(trigger=patch, update_mask=mask))).trigger)


async def _webhooks(kairos: KairosClient, args: argparse.Namespace) -> None:
    w, ws = kairos.webhooks, webhook_service_pb2
    match args.action:
        case "create":
            webhook = webhook_pb2.Webhook(
                trigger=args.trigger, auth_mode=WEBHOOK_AUTH[args.auth], accepted_event_types=args.accept or ()
            )
            for mapping in args.map or ():
                path, _, field = mapping.partition("=")
                webhook.field_mapping[path] = field
            if args.rate is not None or args.burst is not None:
                webhook.rate_limit.requests_per_second = args.rate or 0
                webhook.rate_limit.burst = args.burst or 0
            response = await w.CreateWebhook(ws.CreateWebhookRequest(webhook=webhook))
            _print_secret(response.webhook, response.secret, args)
        case "rotate-secret":
            request = ws.RotateWebhookSecretRequest(name=args.name, grace_period=args.grace)
            response = await w.RotateWebhookSecret(request)
            _print_secret(response.webhook, response.secret, args)
        case "enable" | "disable":
            patch = webhook_pb2.Webhook(name=args.name, disabled=args.action == "disable")
            mask = field_mask_pb2.FieldMask(paths=["disabled"])
            _print((await w.UpdateWebhook(ws.UpdateWebhookRequest(webhook=patch, update_mask=mask))).webhook)
        case "list":
            _print(await w.ListWebhooks(ws.ListWebhooksRequest(trigger=args.trigger)))
        case "get":
            _print((await w.GetWebhook(ws.GetWebhookRequest(name=args.name))).webhook)
        case "delete":
            await w.DeleteWebhook(ws.DeleteWebhookRequest(name=args.name))
            print(f"deleted {args.name}")


def _print_secret(webhook: webhook_pb2.Webhook, secret: str, args: argparse.Namespace) -> None:
    """A webhook and its new secret (shown this once), as JSON and text or as shell variables for eval."""
    url = _webhooks_base(Path(args.data_dir)) + webhook.path.removeprefix("/hooks/")
    if args.output == "env":
        print(f"WEBHOOK_NAME={webhook.name}\nWEBHOOK_URL={url}\nWEBHOOK_SECRET={secret}")
        return
    _print(webhook)
    print(f"\nURL:    {url}\nSecret: {secret}   (shown once; store it now)")


async def _runs(kairos: KairosClient, args: argparse.Namespace) -> None:
    r, rs = kairos.runs, run_service_pb2
    match args.action:
        case "list":
            status = run_pb2.RunStatus.Value(f"RUN_STATUS_{args.status.upper()}") if args.status else 0
            request = rs.ListRunsRequest(parent=args.trigger or "workspaces/-", page_size=args.page_size, status=status)
            _print(await r.ListRuns(request))
        case "get":
            _print((await r.GetRun(rs.GetRunRequest(name=args.name))).run)


async def _workspaces(kairos: KairosClient, args: argparse.Namespace) -> None:
    w, ws = kairos.workspaces, workspace_service_pb2
    match args.action:
        case "create":
            workspace = workspace_pb2.Workspace(name=f"workspaces/{args.id}", display_name=args.display_name)
            _print((await w.CreateWorkspace(ws.CreateWorkspaceRequest(workspace=workspace))).workspace)
        case "create-key":
            response = await w.CreateApiKey(
                ws.CreateApiKeyRequest(
                    parent=f"workspaces/{args.id}",
                    api_key=workspace_pb2.ApiKey(display_name=args.display_name),
                )
            )
            _print(response.api_key)
            print(f"\nAPI key: {response.key}   (shown once; store it now)")
        case "rotate-signing-secret":
            request = ws.RotateSigningSecretRequest(name=f"workspaces/{args.id}", grace_period=args.grace)
            secret = (await w.RotateSigningSecret(request)).signing_secret
            print(f"KAIROS_SIGNING_SECRET={secret}")
            print("kairos: shown once; verify the requests Kairos sends for the workspace with it", file=sys.stderr)


async def _events(kairos: KairosClient, args: argparse.Namespace) -> None:
    e, es = kairos.events, event_service_pb2
    match args.action:
        case "publish":
            data = struct_pb2.Struct()
            data.update(args.data or {})
            request = es.PublishEventRequest(event_type=args.type, data=data, event_id=args.event_id)
            _print(await e.PublishEvent(request))
        case "types":
            request = es.ListEventTypesRequest(page_size=args.page_size, page_token=args.page_token)
            _print(await e.ListEventTypes(request))


COMMANDS = {
    "triggers": _triggers,
    "webhooks": _webhooks,
    "runs": _runs,
    "events": _events,
    "workspaces": _workspaces,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kairos", description=__doc__)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="where kairos dev keeps its data")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("dev", help="run the whole suite on this machine (embedded NATS + SQLite)")
    serve = commands.add_parser("serve", help="run one service, configured by KAIROS_* variables")
    serve.add_argument("service", choices=sorted(SERVICE_MODULES))

    triggers = commands.add_parser("triggers", help="manage triggers").add_subparsers(dest="action", required=True)
    create = triggers.add_parser("create", help="create a trigger (schedule, webhook or event)")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--cron", default="", help="cron expression, e.g. '0 9 * * 1-5' or '*/5 * * * * *'")
    source.add_argument("--every", type=_duration, help="interval such as 30s, 5m, 2h")
    source.add_argument("--at", type=_instant, help="one-shot ISO 8601 instant")
    source.add_argument("--webhook", action="store_true", help="fire from a webhook")
    source.add_argument("--event", default="", help="fire on a platform event type")
    for flag, parse, metavar, purpose in (
        ("--equals", _equals_condition, "PATH=VALUE", "the payload's value at PATH equals VALUE (JSON, else text)"),
        ("--in", _one_of_condition, "PATH=VALUES", "the value at PATH is one of VALUES (JSON list or a,b,c)"),
        ("--exists", exists, "PATH", "the payload has a value at PATH"),
        ("--missing", functools.partial(exists, present=False), "PATH", "the payload has no value at PATH"),
    ):
        create.add_argument(
            flag, type=parse, action="append", dest="conditions", metavar=metavar, help=f"with --event: {purpose}"
        )
    create.add_argument("--timezone", default="", help="IANA zone for --cron (default UTC)")
    create.add_argument("--name", default="", help="display name")
    create.add_argument("--agent", default="agents/demo")
    create.add_argument("--prompt", default="")
    create.add_argument("--input", type=_json_object, help="input template, a JSON object")
    create.add_argument("--entry-point", default="", help="python runner module:function (default: the demo agent)")
    create.add_argument("--http-url", default="", help="POST runs to this agent URL instead")
    create.add_argument("--nats-subject", default="", help="request runs on this NATS subject instead")
    create.add_argument("--owner", default="")
    create.add_argument("--draft", action="store_true", help="create as a draft that does not fire")
    create.add_argument("--request-id", default="", help="idempotency key")
    create.add_argument("--output", choices=["json", "name"], default="json", help="name: print only the name")
    listing = triggers.add_parser("list", help="list the workspace's triggers")
    listing.add_argument("--page-size", type=int, default=50)
    listing.add_argument("--page-token", default="")
    for verb, purpose in (("get", "show a trigger"), ("delete", "delete a trigger and its webhooks")):
        triggers.add_parser(verb, help=purpose).add_argument("name")
    for verb, purpose in (("pause", "stop a trigger from firing"), ("resume", "let a paused trigger fire again")):
        state = triggers.add_parser(verb, help=purpose)
        state.add_argument("name")
        state.add_argument("--note", default="", help="why, kept on the trigger")
    fire = triggers.add_parser("fire", help="fire now, whatever the schedule")
    fire.add_argument("name")
    fire.add_argument("--input", type=_json_object, help="input overrides, a JSON object")
    upcoming = triggers.add_parser("upcoming", help="next fire times of a trigger or the workspace")
    upcoming.add_argument("name", nargs="?", default="")
    upcoming.add_argument("--count", type=int, default=10)
    prompt = triggers.add_parser("set-prompt", help="update a trigger's prompt")
    prompt.add_argument("name")
    prompt.add_argument("prompt")

    webhooks = commands.add_parser("webhooks", help="manage webhooks").add_subparsers(dest="action", required=True)
    create_webhook = webhooks.add_parser("create", help="create a webhook for a webhook trigger")
    create_webhook.add_argument("--trigger", required=True)
    create_webhook.add_argument("--auth", choices=sorted(WEBHOOK_AUTH), default="bearer")
    create_webhook.add_argument("--map", action="append", help="field mapping PATH=FIELD, e.g. contact.phone=phone_to")
    create_webhook.add_argument(
        "--accept", action="append", metavar="TYPE", help="accept only this event type (repeat for more; 422 otherwise)"
    )
    create_webhook.add_argument("--rate", type=float, help="requests per second allowed (429 past it)")
    create_webhook.add_argument("--burst", type=int, help="requests allowed at once before --rate applies")
    rotate = webhooks.add_parser("rotate-secret", help="issue a new secret; the old ones stay valid for --grace")
    rotate.add_argument("name")
    rotate.add_argument(
        "--grace",
        type=_grace,
        default=duration_pb2.Duration(),
        help="keep the old secrets valid this long, e.g. 1d (default: revoke them now)",
    )
    for secret_command in (create_webhook, rotate):
        secret_command.add_argument(
            "--output", choices=["json", "env"], default="json", help="env: WEBHOOK_NAME/URL/SECRET lines for eval"
        )
    webhooks.add_parser("list", help="list the workspace's webhooks").add_argument(
        "--trigger", default="", help="only this trigger's webhooks"
    )
    for verb, purpose in (
        ("get", "show a webhook (its secrets' hints, never their values)"),
        ("delete", "delete a webhook"),
        ("disable", "answer the webhook's senders 403 until it is enabled"),
        ("enable", "accept a disabled webhook's requests again"),
    ):
        webhooks.add_parser(verb, help=purpose).add_argument("name")

    runs = commands.add_parser("runs", help="read run history").add_subparsers(dest="action", required=True)
    list_runs = runs.add_parser("list", help="list runs, newest first")
    list_runs.add_argument("--trigger", default="", help="only this trigger's runs")
    list_runs.add_argument(
        "--status",
        default="",
        choices=["", "running", "completed", "failed", "cancelled", "timed_out", "skipped"],
    )
    list_runs.add_argument("--page-size", type=int, default=20)
    runs.add_parser("get", help="show a run with its input and output").add_argument("name")

    events = commands.add_parser("events", help="publish platform events and list event types")
    event_actions = events.add_subparsers(dest="action", required=True)
    publish = event_actions.add_parser("publish", help="publish an event: every matching event trigger fires once")
    publish.add_argument("type", help="event type, e.g. thread.member_joined")
    publish.add_argument("--data", type=_json_object, help="the event's payload, a JSON object")
    publish.add_argument("--event-id", default="", help="idempotency key: a repeat fires nothing new")
    types = event_actions.add_parser("types", help="list the event types: built-in ones and any the workspace used")
    types.add_argument("--page-size", type=int, default=100)
    types.add_argument("--page-token", default="")

    workspaces = commands.add_parser("workspaces", help="administer workspaces (KAIROS_API_KEY = admin key)")
    workspace_actions = workspaces.add_subparsers(dest="action", required=True)
    for verb, purpose in (("create", "create a workspace"), ("create-key", "create an API key for a workspace")):
        sub = workspace_actions.add_parser(verb, help=purpose)
        sub.add_argument("id")
        sub.add_argument("--display-name", default="")
    signing = workspace_actions.add_parser(
        "rotate-signing-secret",
        help="a new secret for the requests Kairos sends for the workspace (http agents, notify_url); any API key",
    )
    signing.add_argument("--id", default="-", help="the workspace (default: the API key's own)")
    signing.add_argument(
        "--grace",
        type=_grace,
        default=duration_pb2.Duration(),
        help="keep signing with the old secrets too this long, e.g. 1d (default: stop them now)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "conditions", None) and not args.event:
        parser.error("--equals, --in, --exists and --missing filter events: use them with --event")
    try:
        if args.command == "serve":
            sys.exit(_serve(args))
        if args.command == "dev":
            asyncio.run(_dev(args))
            return
        asyncio.run(_call(args))
    except ConfigError as error:
        sys.exit(f"kairos: configuration error: {error}")
    except MessagingError as error:
        sys.exit(f"kairos: NATS: {error}")
    except StartupError as error:
        sys.exit(f"kairos: {error}")
    except grpc.aio.AioRpcError as error:
        details = error_details(error)
        print(f"kairos: {details.code.name}: {details.message}", file=sys.stderr)
        if details.reason:
            print(f"  reason: {details.reason} {details.metadata or ''}".rstrip(), file=sys.stderr)
        for field, description in details.field_violations.items():
            print(f"  {field}: {description}", file=sys.stderr)
        if details.code == grpc.StatusCode.UNAVAILABLE and not details.reason:  # no server answered at all
            print(
                f"  is Kairos running at {_client_address(Path(args.data_dir))}? `make dev` starts it; "
                "KAIROS_ADDRESS points the CLI at another one",
                file=sys.stderr,
            )
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
