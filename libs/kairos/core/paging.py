"""List pagination shared by every service: page sizes and opaque page tokens (keyset positions)."""

from __future__ import annotations

import base64
from datetime import datetime

from kairos.core.errors import invalid_argument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
SEPARATOR = "\x1f"


def page_size(requested: int, default: int = DEFAULT_PAGE_SIZE) -> int:
    """The page size to use; a negative request is INVALID_ARGUMENT, a large one is capped."""
    if requested < 0:
        raise invalid_argument("INVALID_PAGE_SIZE", "page_size", "must not be negative")
    return min(requested or default, MAX_PAGE_SIZE)


def encode_page_token(*parts: str) -> str:
    return base64.urlsafe_b64encode(SEPARATOR.join(parts).encode()).decode()


def decode_page_token(token: str, parts: int) -> list[str]:
    try:
        values = base64.urlsafe_b64decode(token.encode()).decode().split(SEPARATOR)
    except (ValueError, UnicodeDecodeError):
        values = []
    if len(values) != parts:
        raise invalid_argument("INVALID_PAGE_TOKEN", "page_token", "is not a token this service issued")
    return values


def encode_instant_token(instant: datetime, last_id: str) -> str:
    """The position after a row of a list ordered by (instant, id) descending."""
    return encode_page_token(instant.isoformat(), last_id)


def decode_instant_token(token: str) -> tuple[datetime, str]:
    instant, last_id = decode_page_token(token, 2)
    try:
        return datetime.fromisoformat(instant), last_id
    except ValueError:
        raise invalid_argument("INVALID_PAGE_TOKEN", "page_token", "is not a token this service issued") from None
