"""RunService: reads and cancels runs and returns their lifecycle events, scoped to the caller's workspace."""

from __future__ import annotations

from kairos.core.auth import check_workspace, workspace_for
from kairos.core.names import parse_run, parse_trigger
from kairos.core.paging import encode_instant_token
from kairos.executor.runs import RunStore, event_from_row, to_proto
from kairos.executor.worker import FireWorker
from kairos.v1 import run_service_pb2, run_service_pb2_grpc

# A ListRuns page ends early rather than grow past this: runs carry their payload, input and output (each up to the
# 1 MiB a webhook body may be), and most gRPC clients refuse a message over 4 MiB.
MAX_PAGE_BYTES = 3 << 20


def _run_name(name: str):
    parsed = parse_run(name)
    check_workspace(parsed.workspace, name)
    return parsed


class RunServicer(run_service_pb2_grpc.RunServiceServicer):
    def __init__(self, store: RunStore, worker: FireWorker) -> None:
        self._store = store
        self._worker = worker

    async def GetRun(self, request, context):
        return run_service_pb2.GetRunResponse(run=to_proto(await self._store.get(_run_name(request.name))))

    async def ListRuns(self, request, context):
        if "/triggers/" in request.parent:
            trigger = parse_trigger(request.parent, "parent")
            check_workspace(trigger.workspace, request.parent)
            workspace, trigger_id = trigger.workspace, trigger.trigger
        else:
            workspace, trigger_id = workspace_for(request.parent), None
        rows, token = await self._store.list(workspace, trigger_id, request)
        runs, size = [], 0
        for index, row in enumerate(rows):
            run = to_proto(row)
            size += run.ByteSize()
            if runs and size > MAX_PAGE_BYTES:  # the rest on the next page (a page holds at least one run)
                last = rows[index - 1]
                token = encode_instant_token(last.fire_time, last.id)
                break
            runs.append(run)
        return run_service_pb2.ListRunsResponse(runs=runs, next_page_token=token)

    async def CancelRun(self, request, context):
        row = await self._worker.cancel_run(_run_name(request.name))
        return run_service_pb2.CancelRunResponse(run=to_proto(row))

    async def GetRunTrace(self, request, context):
        events = await self._store.trace(_run_name(request.name))
        return run_service_pb2.GetRunTraceResponse(events=[event_from_row(event) for event in events])
