"""The `kairos webhooks` commands as a user runs them (the `kairos` executable) against the whole suite in-process:
a Standard Webhooks webhook with accepted event types and a rate limit, its secret rotated with a grace period
(requests signed with either secret are accepted meanwhile), and disable / enable (403 in between). And the note
`kairos triggers create --at` prints for an instant already past.

The ingress learns of each change through the change feed a few milliseconds later: each step waits (bounded) for
the ingress's webhook mirror to hold the new revision, then sends its requests."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from itertools import count

import httpx
from standardwebhooks import Webhook

from kairos.devtools.processes import KAIROS_COMMAND

WAIT_S = 30.0


async def kairos(suite, api_key: str, *args: str) -> str:
    """Runs `kairos *args` for the workspace of `api_key`; returns what it printed (it must succeed)."""
    env = {
        **os.environ,
        "KAIROS_ADDRESS": suite.address,
        "KAIROS_API_KEY": api_key,
        "KAIROS_WEBHOOKS_URL": suite.webhooks_url,
    }
    process = await asyncio.create_subprocess_exec(
        str(KAIROS_COMMAND), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(WAIT_S):
        output = (await process.stdout.read()).decode()
        assert await process.wait() == 0, output
    return output


def shell_variables(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines())


async def test_webhook_commands_create_rotate_and_disable(suite) -> None:
    api_key = await suite.new_workspace("cli")
    trigger = (await kairos(suite, api_key, "triggers", "create", "--webhook", "--output", "name")).strip()
    created = shell_variables(
        await kairos(
            suite, api_key, "webhooks", "create", "--trigger", trigger, "--auth", "standard-webhooks",
            "--accept", "invoice.paid", "--rate", "1000", "--burst", "1000", "--output", "env",
        )
    )  # fmt: skip
    url, name, first_secret = created["WEBHOOK_URL"], created["WEBHOOK_NAME"], created["WEBHOOK_SECRET"]
    shown = json.loads(await kairos(suite, api_key, "webhooks", "get", name))
    assert shown["accepted_event_types"] == ["invoice.paid"]
    assert shown["rate_limit"] == {"requests_per_second": 1000.0, "burst": 1000}
    message_ids = (f"msg_{n}" for n in count())
    mirror, webhook_id = suite.runtime.extras["ingress.webhooks"], name.rsplit("/", 1)[1]
    revision = (await mirror.get(webhook_id)).revision

    async def ingress_has_the_change() -> None:
        nonlocal revision
        async with asyncio.timeout(WAIT_S):
            record = await mirror.wait_until(webhook_id, lambda value: value is not None and value.revision > revision)
        revision = record.revision

    async with httpx.AsyncClient(timeout=10) as http:

        async def deliver(secret: str, event_type: str = "invoice.paid") -> int:
            body, now, message_id = json.dumps({"type": event_type}), datetime.now(UTC), next(message_ids)
            headers = {
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": Webhook(secret).sign(message_id, now, body),
            }
            return (await http.post(url, content=body, headers=headers)).status_code

        assert await deliver(first_secret) == 202
        assert await deliver(first_secret, "invoice.voided") == 422

        rotated = shell_variables(
            await kairos(suite, api_key, "webhooks", "rotate-secret", name, "--grace", "1h", "--output", "env")
        )
        second_secret = rotated["WEBHOOK_SECRET"]
        assert second_secret != first_secret and rotated["WEBHOOK_URL"] == url
        await ingress_has_the_change()
        assert await deliver(second_secret) == 202
        assert await deliver(first_secret) == 202  # still valid for the grace period
        assert len(json.loads(await kairos(suite, api_key, "webhooks", "get", name))["secrets"]) == 2

        await kairos(suite, api_key, "webhooks", "disable", name)
        await ingress_has_the_change()
        assert await deliver(second_secret) == 403
        await kairos(suite, api_key, "webhooks", "enable", name)
        await ingress_has_the_change()
        assert await deliver(second_secret) == 202

        # without --grace the old secrets stop at once
        revoked = shell_variables(await kairos(suite, api_key, "webhooks", "rotate-secret", name, "--output", "env"))
        await ingress_has_the_change()
        assert await deliver(revoked["WEBHOOK_SECRET"]) == 202
        assert (await deliver(first_secret), await deliver(second_secret)) == (401, 401)


async def test_a_one_shot_created_in_the_past_is_created_with_a_note_that_it_will_never_fire(suite) -> None:
    api_key = await suite.new_workspace("cli-past")
    past = await kairos(suite, api_key, "triggers", "create", "--at", "2020-01-01T00:00:00Z", "--output", "name")
    note, name = past.splitlines()
    assert note == "kairos: note: --at 2020-01-01T00:00:00+00:00 is past: this one-shot will never fire"
    assert name.startswith("workspaces/cli-past/triggers/")
    future = await kairos(suite, api_key, "triggers", "create", "--at", "2999-01-01T00:00:00Z", "--output", "name")
    assert future.startswith("workspaces/cli-past/triggers/") and "note" not in future
