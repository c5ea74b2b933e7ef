"""Standard Webhooks verification, signed with the reference `standardwebhooks` library (not our own signer),
the cache of opened signing keys, and the per-webhook token bucket."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from kairos.core.config import ConfigError, ServiceConfig
from kairos.core.sealing import Sealer
from kairos.ingress.limits import RateLimiter
from kairos.ingress.signatures import SignatureError, SigningKeys, signed_headers, verify
from kairos.v1 import feed_pb2, webhook_pb2

SECRET_KEY = "k" * 40
NAME = "workspaces/acme/webhooks/wh_01jabcdefghjkmnpqrstvwxyz0"
NOW = 1_790_000_000


def signing_key() -> tuple[bytes, str]:
    raw = os.urandom(32)
    return raw, "whsec_" + base64.b64encode(raw).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    return Webhook(secret).sign(message_id, datetime.fromtimestamp(timestamp, UTC), body.decode())


def signed(secret: str, message_id: str, body: bytes, timestamp: int = NOW) -> dict[str, str]:
    """The three Standard Webhooks headers of a delivery signed by the reference library."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def record(sealer: Sealer, *keys: bytes, expired: tuple[bytes, ...] = ()) -> feed_pb2.WebhookRecord:
    result = feed_pb2.WebhookRecord(
        webhook=webhook_pb2.Webhook(
            name=NAME, auth_mode=webhook_pb2.WebhookAuthMode.WEBHOOK_AUTH_MODE_STANDARD_WEBHOOKS
        )
    )
    for index, key in enumerate(keys + expired):
        credential = result.credentials.add(id=f"sec_{index}", sealed_signing_key=sealer.seal(key, NAME))
        if key in expired:
            credential.expire_time.FromSeconds(NOW - 1)
    return result


class CountingSealer(Sealer):
    def __init__(self, secret_key: str) -> None:
        super().__init__(secret_key)
        self.opened = 0

    def open(self, sealed: bytes, context: str) -> bytes:
        self.opened += 1
        return super().open(sealed, context)


def check(keys: list[bytes], headers: dict[str, str], body: bytes, tolerance: float = 300) -> None:
    """Verifies as the ingress does, on the raw header bytes an ASGI server hands over."""
    raw = {name.encode(): value.encode() for name, value in headers.items()}
    message_id, timestamp, signature = signed_headers(raw, NOW, tolerance)
    verify(keys, message_id, timestamp, body, signature)


def refused(keys: list[bytes], headers: dict[str, str], body: bytes, tolerance: float = 300) -> str:
    with pytest.raises(SignatureError) as raised:
        check(keys, headers, body, tolerance)
    assert raised.value.message
    return raised.value.error


def test_reference_signatures_verify_and_anything_else_is_refused() -> None:
    raw, secret = signing_key()
    other_raw, other_secret = signing_key()
    body = b'{"type": "invoice.paid", "amount": 12}'
    headers = signed(secret, "msg_1", body)
    check([raw], headers, body)
    check([other_raw, raw], headers, body)

    assert refused([other_raw], headers, body) == "invalid_signature"
    assert refused([raw], headers, body + b" ") == "invalid_signature"
    assert refused([raw], headers | {"webhook-id": "msg_2"}, body) == "invalid_signature"
    assert refused([raw], headers | {"webhook-timestamp": str(NOW + 1)}, body) == "invalid_signature"
    assert refused([], headers, body) == "invalid_signature"
    for bad in ("v2," + headers["webhook-signature"][3:], "v1,", "v1,!!notbase64", "garbage", " "):
        assert refused([raw], headers | {"webhook-signature": bad}, body) == "invalid_signature"

    # several space-separated signatures (a sender rotating its key): any one valid is enough
    rotating = f"{sign(other_secret, 'msg_1', NOW, body)} v1a,xyz {headers['webhook-signature']}"
    check([raw], headers | {"webhook-signature": rotating}, body)


def test_signature_covers_the_id_bytes_as_sent() -> None:
    raw, secret = signing_key()
    body = b'{"type": "x"}'
    check([raw], signed(secret, "msg_é✓", body), body)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_named(missing: str) -> None:
    raw, secret = signing_key()
    headers = signed(secret, "m", b"{}")
    with pytest.raises(SignatureError) as raised:
        check([raw], {k: v for k, v in headers.items() if k != missing}, b"{}")
    assert raised.value.error == "missing_signature_headers" and missing in raised.value.message


def test_timestamp_tolerance_both_ways() -> None:
    raw, secret = signing_key()

    def headers_at(timestamp: int) -> dict[str, str]:
        return signed(secret, "m", b"{}", timestamp)

    check([raw], headers_at(NOW - 300), b"{}")
    check([raw], headers_at(NOW + 300), b"{}")
    assert refused([raw], headers_at(NOW - 301), b"{}") == "stale_timestamp"
    assert refused([raw], headers_at(NOW + 301), b"{}") == "stale_timestamp"
    assert refused([raw], headers_at(NOW - 61), b"{}", tolerance=60) == "stale_timestamp"
    for bad in ("1.5e9", "-5", "abc", "9" * 20):
        assert refused([raw], headers_at(NOW) | {"webhook-timestamp": bad}, b"{}") == "invalid_timestamp"


def test_signing_keys_are_opened_once_per_credential_and_expire() -> None:
    sealer = CountingSealer(SECRET_KEY)
    current, previous, expired = os.urandom(32), os.urandom(32), os.urandom(32)
    cache = SigningKeys(sealer)
    webhook = record(sealer, current, previous, expired=(expired,))
    for _ in range(5):
        assert cache.current("wh", webhook, NOW) == [current, previous]
    assert sealer.opened == 2
    # a record that changed (rotation) is re-read after forget(); a key sealed for another webhook never opens
    cache.forget("wh")
    stolen = feed_pb2.WebhookRecord()
    stolen.CopyFrom(webhook)
    stolen.webhook.name = "workspaces/evil/webhooks/wh_other"
    assert cache.current("wh_other", stolen, NOW) == []
    assert cache.current("wh", webhook, NOW) == [current, previous]
    # without a secret key (KAIROS_SECRET_KEY unset) no signing key opens, so nothing verifies
    assert SigningKeys(None).current("wh", webhook, NOW) == []


def test_a_cached_signing_key_stops_verifying_once_it_expires() -> None:
    sealer = Sealer(SECRET_KEY)
    rotated_out, current = os.urandom(32), os.urandom(32)
    webhook = record(sealer, current, rotated_out)
    webhook.credentials[1].expire_time.FromSeconds(NOW + 10)
    cache = SigningKeys(sealer)
    assert cache.current("wh", webhook, NOW) == [current, rotated_out]
    assert cache.current("wh", webhook, NOW + 9) == [current, rotated_out]
    assert cache.current("wh", webhook, NOW + 10) == [current]


def test_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(default_per_s=5, default_burst=10, clock=lambda: now[0])
    custom = webhook_pb2.RateLimit(requests_per_second=1, burst=2)
    assert [limiter.acquire("a", custom) for _ in range(3)] == [0, 0, 1]
    assert [limiter.acquire("b", webhook_pb2.RateLimit()) for _ in range(11)] == [0] * 10 + [1]
    now[0] += 1.0
    assert limiter.acquire("a", custom) == 0
    assert limiter.acquire("a", custom) == 1
    slow = webhook_pb2.RateLimit(requests_per_second=0.1, burst=1)
    assert [limiter.acquire("c", slow) for _ in range(2)] == [0, 10]
    limiter.forget("c")
    assert limiter.acquire("c", slow) == 0


def test_tolerance_and_rate_limit_settings() -> None:
    config = ServiceConfig.from_env(
        {"KAIROS_WEBHOOK_TOLERANCE_S": "60", "KAIROS_WEBHOOK_RATE_PER_S": "7", "KAIROS_WEBHOOK_BURST": "9"}
    )
    assert (config.webhook_tolerance_s, config.webhook_rate_per_s, config.webhook_burst) == (60, 7.0, 9)
    assert ServiceConfig.from_env({}).webhook_tolerance_s == 300
    for name, value in (("KAIROS_WEBHOOK_TOLERANCE_S", "0"), ("KAIROS_WEBHOOK_RATE_PER_S", "fast")):
        with pytest.raises(ConfigError, match=name):
            ServiceConfig.from_env({name: value})
