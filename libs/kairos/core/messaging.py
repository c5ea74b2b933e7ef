"""NATS / JetStream plumbing shared by every Kairos service.

One place for the names (streams, subjects, KV buckets), safe subject builders, connecting with sane
reconnect settings, idempotently declaring the streams and KV buckets, and publishing fires with
JetStream de-duplication (`Nats-Msg-Id`).

Subjects:
    kairos.fire.<workspace>.<trigger>        -> stream KAIROS_FIRES        (kept 7 days; one fire = one run; a webhook
                                                                             delivery with a sender's key adds a
                                                                             token of its own, see the ingress)
    kairos.events.<workspace>.<event.type>   -> stream KAIROS_EVENTS       (platform events; the event
                                                                             type may span several tokens)
    kairos.trace.<workspace>.<trigger>       -> stream KAIROS_TRACE        (kept 7 days)
    kairos.dead.<workspace>.<trigger>        -> stream KAIROS_DEAD_LETTERS
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import KV_STREAM_TEMPLATE
from nats.js.kv import KeyValue

from kairos.core.natswire import redacted

log = structlog.get_logger(__name__)

# -- names ---------------------------------------------------------------------------------------------

FIRES_STREAM = "KAIROS_FIRES"
EVENTS_STREAM = "KAIROS_EVENTS"
TRACE_STREAM = "KAIROS_TRACE"
DEAD_LETTERS_STREAM = "KAIROS_DEAD_LETTERS"

FIRE_SUBJECT_PREFIX = "kairos.fire"
EVENT_SUBJECT_PREFIX = "kairos.events"
TRACE_SUBJECT_PREFIX = "kairos.trace"
DEAD_LETTER_SUBJECT_PREFIX = "kairos.dead"

FIRES_SUBJECTS = f"{FIRE_SUBJECT_PREFIX}.>"
EVENTS_SUBJECTS = f"{EVENT_SUBJECT_PREFIX}.>"
TRACE_SUBJECTS = f"{TRACE_SUBJECT_PREFIX}.>"
DEAD_LETTERS_SUBJECTS = f"{DEAD_LETTER_SUBJECT_PREFIX}.>"

TRIGGERS_BUCKET = "kairos_triggers"
WEBHOOKS_BUCKET = "kairos_webhooks"
API_KEYS_BUCKET = "kairos_api_keys"
SCHEDULER_BUCKET = "kairos_scheduler"
WORKSPACES_BUCKET = "kairos_workspaces"
# Created by the ingress (not in ALL_BUCKETS): the event types workspaces used.
EVENT_TYPES_BUCKET = "kairos_event_types"
ALL_BUCKETS = (TRIGGERS_BUCKET, WEBHOOKS_BUCKET, API_KEYS_BUCKET, SCHEDULER_BUCKET, WORKSPACES_BUCKET)

MSG_ID_HEADER = "Nats-Msg-Id"

TRACE_MAX_AGE_S = 7 * 24 * 3600.0
# Fires are kept a week after they are stored, acknowledged or not: long past any executor outage worth
# surviving, and past the 24 hours a webhook delivery's subject keeps refusing its repeats, while the stream (and
# nats-server's per-subject index of keyed deliveries) stays bounded.
FIRES_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_DUPLICATE_WINDOW_S = 600.0
# Streams other than KAIROS_FIRES keep the server's default de-duplication window (stream_config's default).
_OTHER_DUPLICATE_WINDOW_S = 120.0
# JetStream API error code: "stream name already in use with a different configuration".
_ERR_STREAM_NAME_IN_USE = 10058


class MessagingError(Exception):
    """Base class for NATS/JetStream setup problems raised by this module."""


class NatsConnectError(MessagingError, ConnectionError):
    """Could not connect to the NATS server at a URL."""


class InvalidSubjectTokenError(MessagingError, ValueError):
    """An id or event type cannot be used in a NATS subject (empty, or contains `.`, `*`, `>`, whitespace)."""


# -- subjects ------------------------------------------------------------------------------------------

# NATS separates tokens with '.', uses '*' and '>' as wildcards and forbids whitespace; control characters
# are rejected too so nothing odd can reach a subject.
_BAD_TOKEN_CHARS = re.compile(r"[.*>\s\x00-\x1f\x7f]")


def validate_token(value: str, what: str = "id") -> str:
    """Return `value` if it is a single, wildcard-free subject token; raise `InvalidSubjectTokenError`."""
    if not isinstance(value, str) or not value:
        raise InvalidSubjectTokenError(f"{what} must be a non-empty string, got {value!r}")
    bad = _BAD_TOKEN_CHARS.search(value)
    if bad is not None:
        raise InvalidSubjectTokenError(
            f"{what} {value!r} contains {bad.group()!r}; '.', '*', '>' and whitespace are not allowed"
        )
    return value


def _validate_event_type(event_type: str) -> str:
    """Event types are dotted (`thread.member_joined`): each dot-separated part must be a valid token."""
    if not isinstance(event_type, str) or not event_type:
        raise InvalidSubjectTokenError(f"event type must be a non-empty string, got {event_type!r}")
    for part in event_type.split("."):
        validate_token(part, f"event type {event_type!r} part")
    return event_type


AGENT_SUBJECT_PREFIX = "kairos.agents."


def reserved_for_kairos(subject: str) -> bool:
    """Whether `subject` belongs to Kairos itself, so no agent runner may send to it: every `kairos.` subject but
    the agents' (`kairos.agents.`), reply inboxes (`_INBOX.`) and NATS's own (`$`). A trigger whose runner sent
    to, say, `kairos.events.<another workspace>.<type>` would fire that workspace's event triggers."""
    if subject.startswith("kairos."):
        return not subject.startswith(AGENT_SUBJECT_PREFIX)
    return subject.startswith(("_INBOX.", "$"))


def fire_subject(workspace: str, trigger_id: str) -> str:
    """`kairos.fire.<workspace>.<trigger_id>`."""
    return _join(FIRE_SUBJECT_PREFIX, workspace, trigger_id)


def event_subject(workspace: str, event_type: str) -> str:
    """`kairos.events.<workspace>.<event_type>`; a dotted event type becomes several tokens."""
    return f"{EVENT_SUBJECT_PREFIX}.{validate_token(workspace, 'workspace')}.{_validate_event_type(event_type)}"


def trace_subject(workspace: str, trigger_id: str) -> str:
    """`kairos.trace.<workspace>.<trigger_id>`."""
    return _join(TRACE_SUBJECT_PREFIX, workspace, trigger_id)


def dead_letter_subject(workspace: str, trigger_id: str) -> str:
    """`kairos.dead.<workspace>.<trigger_id>`."""
    return _join(DEAD_LETTER_SUBJECT_PREFIX, workspace, trigger_id)


def _join(prefix: str, workspace: str, trigger_id: str) -> str:
    return f"{prefix}.{validate_token(workspace, 'workspace')}.{validate_token(trigger_id, 'trigger id')}"


# -- connecting ----------------------------------------------------------------------------------------


NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def nats_servers(url: str) -> list[str]:
    """The servers of a NATS URL setting: one URL, or a comma-separated list of a cluster's servers (the first
    connection may be to any of them; nats-py learns the rest of the cluster from the server). A server that is not
    a NATS URL is a NatsConnectError naming it without its credentials (nats-py would fail on it obscurely)."""
    servers = [server.strip() for server in url.split(",") if server.strip()]
    if not servers:
        raise NatsConnectError("no NATS server in the URL (e.g. nats://127.0.0.1:4222)")
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        problem = ""
        if parts.scheme not in NATS_SCHEMES:
            problem = f"{parts.scheme}:// is not a NATS scheme (use {', '.join(f'{s}://' for s in NATS_SCHEMES)})"
        elif not parts.hostname:
            problem = "it names no host"
        else:
            try:
                parts.port  # noqa: B018 (raises ValueError for a port that is not a number from 0 to 65535)
            except ValueError:
                problem = "its port is not a number from 0 to 65535"
        if problem:
            raise NatsConnectError(f"{redacted(server)} is not a NATS server URL: {problem}")
    return servers


def redacted_servers(url: str) -> str:
    """The servers of a NATS URL setting without their credentials, for logs and messages."""
    return ", ".join(redacted(server) for server in nats_servers(url))


async def connect(
    url: str,
    name: str,
    *,
    connect_timeout: float = 10.0,
    on_connection_change: Callable[[bool], None] | None = None,
    **kw: Any,
) -> Client:
    """Connect to NATS at `url` (one server, or several separated by commas) as client `name`, reconnecting
    forever once connected.

    The first connection must succeed within `connect_timeout` seconds, otherwise `NatsConnectError` names the
    URL. `on_connection_change(False)` is called when the connection is lost, `(True)` when it is back.
    Extra keyword arguments go to `nats.aio.client.Client.connect` and override the defaults
    (e.g. `error_cb`, `disconnected_cb`, `reconnected_cb`, `reconnect_time_wait`).
    """
    servers = nats_servers(url)
    where = redacted_servers(url)
    bound = log.bind(nats_url=where, client_name=name)

    async def error_cb(e: Exception) -> None:
        bound.warning("nats.error", error=repr(e))

    async def disconnected_cb() -> None:
        bound.warning("nats.disconnected")
        if on_connection_change is not None:
            on_connection_change(False)

    async def reconnected_cb() -> None:
        bound.info("nats.reconnected")
        if on_connection_change is not None:
            on_connection_change(True)

    async def closed_cb() -> None:
        bound.info("nats.closed")

    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": max(0.1, min(2.0, connect_timeout)),  # per attempt
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "closed_cb": closed_cb,
    }
    options.update(kw)
    nc = Client()
    try:
        # With max_reconnect_attempts=-1 nats-py retries the first connect forever; bound it here.
        await asyncio.wait_for(nc.connect(**options), connect_timeout)
    except asyncio.CancelledError:  # e.g. a stop during start-up: no reconnecting left behind
        await nc.close()
        raise
    except (TimeoutError, OSError, nats.errors.Error) as e:
        last_error = nc.last_error or e
        await nc.close()
        raise NatsConnectError(
            f"could not connect to NATS at {where} within {connect_timeout:g}s: {last_error!r}"
        ) from e
    bound.info("nats.connected")
    return nc


# -- streams and buckets -------------------------------------------------------------------------------


def stream_config(
    name: str,
    subjects: str,
    description: str,
    *,
    replicas: int = 1,
    max_age_s: float = 0,
    duplicate_window_s: float = _OTHER_DUPLICATE_WINDOW_S,
    retention: RetentionPolicy = RetentionPolicy.LIMITS,
) -> StreamConfig:
    """One Kairos stream: file storage, the oldest messages discarded at the limits, `max_age_s` 0 = kept."""
    return StreamConfig(
        name=name,
        description=description,
        subjects=[subjects],
        retention=retention,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        max_age=max_age_s,
        duplicate_window=duplicate_window_s,
    )


def stream_configs(*, replicas: int = 1, duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S) -> list[StreamConfig]:
    """The desired configuration of the four Kairos streams (file storage, limits retention)."""
    return [
        # Limits retention, not WorkQueue: executors share one durable consumer and fires stay readable.
        stream_config(
            FIRES_STREAM,
            FIRES_SUBJECTS,
            "Kairos fires: one message per agent run (7 days)",
            replicas=replicas,
            duplicate_window_s=duplicate_window_s,
            max_age_s=FIRES_MAX_AGE_S,
        ),
        stream_config(EVENTS_STREAM, EVENTS_SUBJECTS, "Kairos platform events", replicas=replicas),
        stream_config(
            TRACE_STREAM, TRACE_SUBJECTS, "Kairos run traces (7 days)", replicas=replicas, max_age_s=TRACE_MAX_AGE_S
        ),
        stream_config(
            DEAD_LETTERS_STREAM, DEAD_LETTERS_SUBJECTS, "Kairos fires that could not be delivered", replicas=replicas
        ),
    ]


def _ns(seconds: float | None) -> int:
    return round((seconds or 0) * 1_000_000_000)


def _config_diff(existing: StreamConfig, desired: StreamConfig) -> dict[str, Any]:
    """The managed fields whose value differs: {field: desired value}."""
    diff: dict[str, Any] = {}
    if sorted(existing.subjects or []) != sorted(desired.subjects or []):
        diff["subjects"] = desired.subjects
    for field in ("description", "retention", "storage", "discard", "num_replicas"):
        want, have = getattr(desired, field), getattr(existing, field)
        if have != want:
            diff[field] = want
    for field in ("max_age", "duplicate_window"):
        want, have = getattr(desired, field), getattr(existing, field)
        if _ns(have) != _ns(want):
            diff[field] = want
    return diff


async def ensure_stream(js: JetStreamContext, desired: StreamConfig) -> StreamConfig:
    """Create stream `desired.name` if missing, else update the managed fields that differ.

    Fields Kairos does not manage (e.g. max_bytes set by an operator) are left as they are. Returns the
    stream's configuration as the server reports it.
    """
    assert desired.name is not None
    try:
        info = await js.stream_info(desired.name)
    except nats.js.errors.NotFoundError:
        try:
            info = await js.add_stream(desired)
            log.info("nats.stream_created", stream=desired.name)
            return info.config
        except nats.js.errors.BadRequestError as e:
            if e.err_code != _ERR_STREAM_NAME_IN_USE:
                raise
            # Lost a race with another service creating it with a different config: fall through.
            info = await js.stream_info(desired.name)
    diff = _config_diff(info.config, desired)
    if not diff:
        return info.config
    try:
        info = await js.update_stream(info.config.evolve(**diff))
    except nats.js.errors.APIError as e:
        raise MessagingError(
            f"stream {desired.name} exists with a different configuration and cannot be updated "
            f"(differs in {sorted(diff)}): {e}"
        ) from e
    log.info("nats.stream_updated", stream=desired.name, fields=sorted(diff))
    return info.config


async def ensure_streams(
    js: JetStreamContext, *, replicas: int = 1, duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
) -> None:
    """Create or update KAIROS_FIRES, KAIROS_EVENTS, KAIROS_TRACE and KAIROS_DEAD_LETTERS (idempotent)."""
    for desired in stream_configs(replicas=replicas, duplicate_window_s=duplicate_window_s):
        await ensure_stream(js, desired)


async def ensure_key_value(
    js: JetStreamContext,
    bucket: str,
    *,
    history: int = 1,
    replicas: int = 1,
) -> KeyValue:
    """Return the KV bucket `bucket`, creating it (file storage) or fixing its history/replicas."""
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            kv = await js.create_key_value(bucket=bucket, history=history, replicas=replicas, storage=StorageType.FILE)
            log.info("nats.kv_created", bucket=bucket)
            return kv
        except nats.js.errors.BadRequestError as e:
            if e.err_code != _ERR_STREAM_NAME_IN_USE:
                raise
            kv = await js.key_value(bucket)  # created concurrently with another config: fix it below
    info = await js.stream_info(KV_STREAM_TEMPLATE.format(bucket=bucket))
    diff: dict[str, Any] = {}
    if info.config.max_msgs_per_subject != history:
        diff["max_msgs_per_subject"] = history
    if info.config.num_replicas != replicas:
        diff["num_replicas"] = replicas
    if diff:
        try:
            await js.update_stream(info.config.evolve(**diff))
        except nats.js.errors.APIError as e:
            raise MessagingError(f"KV bucket {bucket} cannot be updated ({sorted(diff)}): {e}") from e
        log.info("nats.kv_updated", bucket=bucket, fields=sorted(diff))
    return kv


@dataclass(frozen=True)
class KairosBuckets:
    """Handles on the Kairos KV buckets, as returned by `ensure_all`."""

    triggers: KeyValue
    webhooks: KeyValue
    api_keys: KeyValue
    scheduler: KeyValue
    workspaces: KeyValue


async def ensure_all(
    js: JetStreamContext, replicas: int = 1, *, duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
) -> KairosBuckets:
    """Declare every Kairos stream and KV bucket (idempotent) and return the bucket handles."""
    await ensure_streams(js, replicas=replicas, duplicate_window_s=duplicate_window_s)
    return KairosBuckets(
        triggers=await ensure_key_value(js, TRIGGERS_BUCKET, replicas=replicas),
        webhooks=await ensure_key_value(js, WEBHOOKS_BUCKET, replicas=replicas),
        api_keys=await ensure_key_value(js, API_KEYS_BUCKET, replicas=replicas),
        scheduler=await ensure_key_value(js, SCHEDULER_BUCKET, replicas=replicas),
        workspaces=await ensure_key_value(js, WORKSPACES_BUCKET, replicas=replicas),
    )


JETSTREAM_WAIT_S = 120.0


class NoJetStreamError(MessagingError):
    """Nothing answers JetStream API requests: the NATS server runs without JetStream."""


async def ensure_all_when_ready(
    js: JetStreamContext, replicas: int = 1, *, wait_s: float = JETSTREAM_WAIT_S
) -> KairosBuckets:
    """`ensure_all`, tried again for up to `wait_s` seconds while JetStream cannot answer yet (a cluster without a
    meta leader or a quorum lets the request time out, or answers 503): services started together with their
    NATS cluster wait for it instead of exiting. Each failed attempt is logged. A server without JetStream is
    an error at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return await ensure_all(js, replicas)
        except nats.js.errors.ServiceUnavailableError as error:
            if error.code is None:  # how nats-py reports "no responders": no JetStream on the server at all
                raise NoJetStreamError("the NATS server has no JetStream: start nats-server with -js") from error
            problem: Exception = error
        except nats.errors.TimeoutError as error:
            problem = error
        if loop.time() >= deadline:
            raise problem
        log.warning("nats.jetstream_not_ready", attempt=attempt, error=repr(problem))
        await asyncio.sleep(min(5.0, 0.5 * attempt))  # back-off between two attempts


# -- publishing ----------------------------------------------------------------------------------------


async def publish_fire(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    msg_id: str,
    timeout: float = 5.0,
    *,
    headers: Mapping[str, str] | None = None,
) -> PubAck:
    """Publish a fire to KAIROS_FIRES with `Nats-Msg-Id: msg_id` and return the JetStream ack.

    Publishing the same `msg_id` again within the stream's duplicate window stores nothing and returns
    an ack with `duplicate=True` (and the sequence of the original message), so retries are safe.
    Raises `nats.errors.TimeoutError` if JetStream does not ack in `timeout` seconds and
    `nats.js.errors.NoStreamResponseError` if no stream captures `subject`.
    """
    if not msg_id:
        raise ValueError("msg_id must be non-empty: it is the de-duplication key")
    all_headers = dict(headers or {})
    all_headers[MSG_ID_HEADER] = msg_id
    ack = await js.publish(subject, payload, timeout=timeout, stream=FIRES_STREAM, headers=all_headers)
    if ack.duplicate:
        log.info("nats.fire_duplicate", subject=subject, msg_id=msg_id, seq=ack.seq)
    return ack
