"""Secret material: generation, one-way digests and constant-time checks. Secrets are never stored or logged."""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "kairos"


def new_secret(prefix: str, nbytes: int = 32) -> str:
    """A random URL-safe secret such as `whk_3Jf...`; the prefix tells a leaked secret's kind at a glance."""
    return f"{prefix}_{secrets.token_urlsafe(nbytes)}"


def digest(secret: str) -> bytes:
    """SHA-256 of a high-entropy secret. Enough for random tokens; never used for passwords."""
    return hashlib.sha256(secret.encode()).digest()


def matches(secret: str, expected_digest: bytes) -> bool:
    """Constant-time comparison of a presented secret with a stored digest."""
    return hmac.compare_digest(digest(secret), expected_digest)


def new_api_key(key_id: str) -> str:
    """`kairos_<key id>_<secret>`: the key id finds the stored digest, the rest is the secret."""
    return f"{API_KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def split_api_key(key: str) -> str | None:
    """The key id of a well-formed API key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]
