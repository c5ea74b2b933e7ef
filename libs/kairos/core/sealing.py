"""Encryption at rest for secrets that must be usable again (Standard Webhooks signing keys): AES-256-GCM
with a key derived by HKDF from the operator's KAIROS_SECRET_KEY. Everything else is stored as a digest."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"\x01"
NONCE_BYTES = 12
MIN_SECRET_KEY_CHARS = 32


class SealingError(Exception):
    """A sealed value could not be opened: wrong key, or tampered with."""


class Sealer:
    """Seals and opens small secrets; `context` (e.g. the webhook name) is bound to each ciphertext, so a
    sealed value copied to another record does not open there."""

    def __init__(self, secret_key: str) -> None:
        if len(secret_key) < MIN_SECRET_KEY_CHARS:
            raise ValueError(f"the secret key must be at least {MIN_SECRET_KEY_CHARS} characters")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"kairos sealing v1").derive(
            secret_key.encode()
        )
        self._aead = AESGCM(derived)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if not sealed.startswith(VERSION) or len(sealed) < 1 + NONCE_BYTES + 16:
            raise SealingError("not a sealed value of this version")
        nonce, ciphertext = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, context.encode())
        except InvalidTag:
            raise SealingError("the sealed value does not open with this key and context") from None
