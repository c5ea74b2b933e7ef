"""Standard Webhooks signing, and the background queue that POSTs lifecycle events to a trigger's notify_url.

Callbacks never block a run: events are queued and sent by a few background senders (one URL always goes to
the same sender, so its events arrive in order), retried with exponential backoff on 5xx, timeouts and
network errors, dropped on other 4xx, and a 410 Gone stops every later callback to that URL in this process.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from standardwebhooks import Webhook

from kairos.core.tasks import spawn

log = structlog.get_logger(__name__)

QUEUE_SIZE = 10_000
MAX_ATTEMPTS = 5
INITIAL_BACKOFF_S = 0.5
TIMEOUT_S = 10.0
SENDERS = 8


class Signer:
    """Adds `webhook-id`, `webhook-timestamp` and `webhook-signature` headers (KAIROS_NOTIFY_SIGNING_SECRET,
    a `whsec_<base64>` secret); without a secret, requests go unsigned."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret) if secret else None

    def headers(self, message_id: str, body: str) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._webhook is None:
            return headers
        now = datetime.now(UTC)
        headers["webhook-id"] = message_id
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        headers["webhook-signature"] = self._webhook.sign(message_id, now, body)
        return headers


class Notifier:
    """Queues signed callbacks and delivers them in the background, in order per URL."""

    def __init__(self, http: httpx.AsyncClient, signer: Signer) -> None:
        self._http = http
        self._signer = signer
        self._queues: list[asyncio.Queue[tuple[str, str, dict[str, Any]]]] = [
            asyncio.Queue(QUEUE_SIZE) for _ in range(SENDERS)
        ]
        self._gone: set[str] = set()
        self._senders: list[asyncio.Task] = []

    def start(self) -> None:
        self._senders = [
            spawn(self._deliver_forever(queue), f"executor-notify-{index}") for index, queue in enumerate(self._queues)
        ]

    async def stop(self) -> None:
        for sender in self._senders:
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)

    def enqueue(self, url: str, event_id: str, event: dict[str, Any]) -> None:
        if url in self._gone:
            return
        try:
            self._queues[zlib.crc32(url.encode()) % SENDERS].put_nowait((url, event_id, event))
        except asyncio.QueueFull:
            log.warning("notify queue full; dropping a callback", url=url, event=event_id)

    async def _deliver_forever(self, queue: asyncio.Queue[tuple[str, str, dict[str, Any]]]) -> None:
        while True:
            url, event_id, event = await queue.get()
            if url not in self._gone:
                await self._deliver(url, event_id, event)

    async def _deliver(self, url: str, event_id: str, event: dict[str, Any]) -> None:
        body = json.dumps(event)
        delay = INITIAL_BACKOFF_S
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = await self._http.post(
                    url, content=body, headers=self._signer.headers(event_id, body), timeout=TIMEOUT_S
                )
            except httpx.HTTPError as error:
                status, detail = 0, str(error) or type(error).__name__
            else:
                status, detail = response.status_code, ""
                if status < 300:
                    return
                if status == 410:
                    log.info("notify_url answered 410 Gone; no more callbacks to it", url=url)
                    self._gone.add(url)
                    return
                if status < 500:
                    log.warning("notify_url refused a callback", url=url, status=status)
                    return
            if attempt < MAX_ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
        log.warning("notify_url callback given up", url=url, event=event_id, status=status, error=detail)
