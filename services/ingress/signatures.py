"""Standard Webhooks verification (https://www.standardwebhooks.com): `webhook-signature` carries one or more
space-separated `v1,<base64 HMAC-SHA256>` of `<webhook-id>.<webhook-timestamp>.<body>`; any one of them
matching any current signing key of the webhook is enough, so senders can rotate keys without downtime.
Signing keys arrive sealed in the change feed and are opened once per credential, then cached."""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import math
from collections.abc import Mapping

from kairos.core.sealing import Sealer, SealingError
from kairos.v1 import feed_pb2

DEFAULT_TOLERANCE_S = 300
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_SIGNATURES = 10


class SignatureError(Exception):
    """A request whose signature headers are missing, stale or do not match; `error` is the JSON code."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


def signed_headers(
    headers: Mapping[bytes, bytes], now_seconds: float, tolerance_s: float
) -> tuple[bytes, bytes, bytes]:
    """The raw (id, timestamp, signature) headers, checked for presence and freshness before the body is read:
    the signature covers the header bytes as sent, so they are never decoded."""
    message_id, timestamp, signature = (
        headers.get(b"webhook-id"),
        headers.get(b"webhook-timestamp"),
        headers.get(b"webhook-signature"),
    )
    if not (message_id and timestamp and signature):
        missing = ", ".join(name for name in SIGNATURE_HEADERS if not headers.get(name.encode()))
        raise SignatureError("missing_signature_headers", f"send the Standard Webhooks headers {missing}")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureError("invalid_timestamp", "webhook-timestamp must be whole seconds since the Unix epoch")
    if abs(now_seconds - int(timestamp)) > tolerance_s:
        raise SignatureError(
            "stale_timestamp", f"webhook-timestamp is more than {tolerance_s:g} seconds away from the current time"
        )
    return message_id, timestamp, signature


def presented_signatures(header: bytes) -> list[bytes]:
    """The decoded `v1` signatures of a `webhook-signature` header (other versions are ignored)."""
    signatures = []
    for item in header.split(b" ")[:MAX_SIGNATURES]:
        version, _, encoded = item.partition(b",")
        if version != b"v1" or not encoded:
            continue
        try:
            signatures.append(binascii.a2b_base64(encoded, strict_mode=True))
        except (binascii.Error, ValueError):
            continue
    return signatures


@functools.lru_cache(maxsize=4096)
def _keyed_hmac(key: bytes):
    """An HMAC-SHA256 already keyed with `key`: copying it costs half of keying a new one (OpenSSL 3). Where the
    hmac module wraps OpenSSL's HMAC object, that object itself, whose copy/update/digest skip the wrapper."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    return getattr(mac, "_hmac", None) or mac


def verify(keys: list[bytes], message_id: bytes, timestamp: bytes, body: bytes, signature_header: bytes) -> None:
    """Raises SignatureError unless one presented signature is the HMAC of the message under one of `keys`."""
    presented = presented_signatures(signature_header)
    if not presented:
        raise SignatureError("invalid_signature", "webhook-signature holds no v1,<base64> signature")
    signed = b"%s.%s.%s" % (message_id, timestamp, body)
    valid = False
    for key in keys:
        mac = _keyed_hmac(key).copy()
        mac.update(signed)
        expected = mac.digest()
        for candidate in presented:
            valid |= hmac.compare_digest(expected, candidate)
    if not valid:
        raise SignatureError("invalid_signature", "no webhook-signature matches this webhook's signing secret")


class SigningKeys:
    """Opens the sealed signing keys of webhook records once per credential; later requests use the cache,
    which for an unchanged record object is a list of (key, expiry) read without touching the protobuf.
    `forget(webhook_id)` drops a webhook's keys when its record changes or goes."""

    def __init__(self, sealer: Sealer | None) -> None:
        self._sealer = sealer
        self._opened: dict[str, dict[str, tuple[bytes, bytes]]] = {}
        # webhook id -> (record, [(key, expiry)], the keys, the earliest expiry)
        self._of_record: dict[str, tuple[feed_pb2.WebhookRecord, list[tuple[bytes, float]], list[bytes], float]] = {}

    def current(self, webhook_id: str, record: feed_pb2.WebhookRecord, now_seconds: float) -> list[bytes]:
        """The unexpired signing keys of `record`; keys that do not open are skipped (and never cached)."""
        cached = self._of_record.get(webhook_id)
        if cached is None or cached[0] is not record:
            keys, complete = self._open_all(webhook_id, record, now_seconds)
            if not complete:
                return [key for key, _ in keys]
            earliest = min((expires for _, expires in keys), default=math.inf)
            cached = self._of_record[webhook_id] = (record, keys, [key for key, _ in keys], earliest)
        if now_seconds < cached[3]:
            return cached[2]  # no key has expired yet
        return [key for key, expires in cached[1] if expires > now_seconds]

    def _open_all(
        self, webhook_id: str, record: feed_pb2.WebhookRecord, now_seconds: float
    ) -> tuple[list[tuple[bytes, float]], bool]:
        """(key, expiry) of each unexpired credential that opens; False when some key did not open."""
        opened = self._opened.setdefault(webhook_id, {})
        keys, complete = [], True
        for credential in record.credentials:
            if not credential.sealed_signing_key:
                continue
            expires = credential.expire_time.seconds if credential.HasField("expire_time") else math.inf
            if expires <= now_seconds:
                continue
            cached = opened.get(credential.id)
            if cached is not None and cached[0] == credential.sealed_signing_key:
                keys.append((cached[1], expires))
                continue
            key = self._open(record.webhook.name, credential.sealed_signing_key)
            if key is None:
                complete = False
            else:
                opened[credential.id] = (credential.sealed_signing_key, key)
                keys.append((key, expires))
        return keys, complete

    def forget(self, webhook_id: str) -> None:
        self._opened.pop(webhook_id, None)
        self._of_record.pop(webhook_id, None)

    def opened_count(self) -> int:
        return sum(len(opened) for opened in self._opened.values())

    def _open(self, webhook_name: str, sealed: bytes) -> bytes | None:
        if self._sealer is None:
            return None
        try:
            return self._sealer.open(sealed, webhook_name)
        except SealingError:
            return None
