"""ListRuns pages newest first with opaque tokens, and refuses a token it did not issue."""

from __future__ import annotations

import grpc
import pytest

from kairos.client import error_details, webhook_trigger
from kairos.devtools.suite import traces_of
from kairos.v1 import run_service_pb2, trigger_service_pb2


async def test_list_runs_pages_newest_first(suite) -> None:
    key = await suite.new_workspace("paging")
    async with suite.client(key) as kairos, traces_of(suite, "paging") as traces:
        trigger = (
            await kairos.triggers.CreateTrigger(trigger_service_pb2.CreateTriggerRequest(trigger=webhook_trigger()))
        ).trigger
        fired = []
        for number in range(3):
            request = trigger_service_pb2.FireTriggerRequest(name=trigger.name, request_id=f"fire-{number}")
            fired.append((await kairos.triggers.FireTrigger(request)).fire_id)
            await traces.run_ended(fired[-1])

        first = await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger.name, page_size=2))
        assert len(first.runs) == 2 and first.next_page_token
        second = await kairos.runs.ListRuns(
            run_service_pb2.ListRunsRequest(parent=trigger.name, page_size=2, page_token=first.next_page_token)
        )
        assert len(second.runs) == 1 and not second.next_page_token
        assert [run.fire_id for run in [*first.runs, *second.runs]] == fired[::-1]

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await kairos.runs.ListRuns(run_service_pb2.ListRunsRequest(parent=trigger.name, page_token="not-ours"))
        details = error_details(refused.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT and details.reason == "INVALID_PAGE_TOKEN"
        assert "page_token" in details.field_violations
