"""UpdateWorkspace over gRPC against the registry (in-process, real NATS, SQLite and PostgreSQL): the operator
changes quotas and they take effect on the next create; a workspace key may rename its own workspace but not change
its quotas; stale etags, negative quotas and unknown mask paths are refused with reasons."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2

from kairos.client import error_details, schedule_trigger
from kairos.devtools.suite import Suite, running_suite
from kairos.v1 import trigger_service_pb2, workspace_pb2, workspace_service_pb2


@pytest_asyncio.fixture
async def registry(tmp_path: Path, database_url: str) -> AsyncIterator[Suite]:
    async with running_suite(tmp_path, database_url, ("registry",)) as running:
        yield running


def update(workspace: workspace_pb2.Workspace, *paths: str) -> workspace_service_pb2.UpdateWorkspaceRequest:
    return workspace_service_pb2.UpdateWorkspaceRequest(
        workspace=workspace, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
    )


async def refused(call, code: grpc.StatusCode, reason: str = ""):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    details = error_details(raised.value)
    assert details.code == code, details
    if reason:
        assert details.reason == reason, details
    return details


async def test_update_workspace_quotas_and_name(registry: Suite) -> None:
    key = await registry.new_workspace("acme")
    name = "workspaces/acme"
    async with registry.client(registry.admin_key) as admin, registry.client(key) as kairos:
        workspaces = admin.workspaces
        created = (await workspaces.GetWorkspace(workspace_service_pb2.GetWorkspaceRequest(name=name))).workspace

        lowered = (
            await workspaces.UpdateWorkspace(
                update(
                    workspace_pb2.Workspace(name=name, quota=workspace_pb2.WorkspaceQuota(max_schedule_triggers=1)),
                    "quota.max_schedule_triggers",
                )
            )
        ).workspace
        assert lowered.quota.max_schedule_triggers == 1 and lowered.etag != created.etag

        async def create_schedule():
            return await kairos.triggers.CreateTrigger(
                trigger_service_pb2.CreateTriggerRequest(trigger=schedule_trigger(cron="0 9 * * *"))
            )

        await create_schedule()
        details = await refused(create_schedule(), grpc.StatusCode.RESOURCE_EXHAUSTED, "TRIGGER_LIMIT_EXCEEDED")
        assert details.metadata["limit"] == "1"

        raised = (
            await workspaces.UpdateWorkspace(
                update(
                    workspace_pb2.Workspace(
                        name=name, etag=lowered.etag, quota=workspace_pb2.WorkspaceQuota(max_schedule_triggers=2)
                    ),
                    "quota",
                )
            )
        ).workspace
        assert raised.quota.max_schedule_triggers == 2
        await create_schedule()

        # the workspace's own key may rename it, but not change its quotas
        renamed = (
            await kairos.workspaces.UpdateWorkspace(
                update(workspace_pb2.Workspace(name=name, display_name="Acme Inc."), "display_name")
            )
        ).workspace
        assert renamed.display_name == "Acme Inc." and renamed.quota.max_schedule_triggers == 2
        await refused(
            kairos.workspaces.UpdateWorkspace(
                update(
                    workspace_pb2.Workspace(name=name, quota=workspace_pb2.WorkspaceQuota(max_schedule_triggers=99)),
                    "quota.max_schedule_triggers",
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )

        await refused(
            workspaces.UpdateWorkspace(
                update(workspace_pb2.Workspace(name=name, etag=lowered.etag, display_name="stale"), "display_name")
            ),
            grpc.StatusCode.ABORTED,
            "ETAG_MISMATCH",
        )
        details = await refused(
            workspaces.UpdateWorkspace(
                update(
                    workspace_pb2.Workspace(name=name, quota=workspace_pb2.WorkspaceQuota(max_concurrent_runs=-1)),
                    "quota.max_concurrent_runs",
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_QUOTA",
        )
        assert "workspace.quota.max_concurrent_runs" in details.field_violations
        await refused(
            workspaces.UpdateWorkspace(update(workspace_pb2.Workspace(name=name), "create_time")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_UPDATE_MASK",
        )
        await refused(
            kairos.workspaces.UpdateWorkspace(
                update(workspace_pb2.Workspace(name="workspaces/other", display_name="x"), "display_name")
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        final = (await workspaces.GetWorkspace(workspace_service_pb2.GetWorkspaceRequest(name=name))).workspace
        assert final.display_name == "Acme Inc." and final.quota.max_schedule_triggers == 2
