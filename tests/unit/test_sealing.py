"""kairos.core.sealing: sealed secrets open only with the same key and context, and any tampering is detected."""

from __future__ import annotations

import pytest

from kairos.core.sealing import Sealer, SealingError

KEY = "k" * 32
WEBHOOK = "workspaces/acme/webhooks/wh_1"


def test_a_sealed_value_opens_with_the_same_key_and_context() -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal(b"signing key bytes", WEBHOOK)
    assert b"signing key bytes" not in sealed
    assert sealer.open(sealed, WEBHOOK) == b"signing key bytes"
    assert Sealer(KEY).open(sealed, WEBHOOK) == b"signing key bytes"


def test_sealing_twice_gives_different_ciphertexts() -> None:
    sealer = Sealer(KEY)
    assert sealer.seal(b"same", WEBHOOK) != sealer.seal(b"same", WEBHOOK)


@pytest.mark.parametrize(
    "open_with",
    [
        lambda sealed: Sealer(KEY).open(sealed, WEBHOOK + "x"),
        lambda sealed: Sealer("j" * 32).open(sealed, WEBHOOK),
        lambda sealed: Sealer(KEY).open(sealed[:-1] + bytes([sealed[-1] ^ 1]), WEBHOOK),
        lambda sealed: Sealer(KEY).open(b"\x02" + sealed[1:], WEBHOOK),
        lambda sealed: Sealer(KEY).open(sealed[:20], WEBHOOK),
    ],
    ids=["other context", "other key", "tampered", "unknown version", "truncated"],
)
def test_a_sealed_value_does_not_open_otherwise(open_with) -> None:
    sealed = Sealer(KEY).seal(b"secret", WEBHOOK)
    with pytest.raises(SealingError):
        open_with(sealed)


def test_a_short_secret_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        Sealer("k" * 31)
