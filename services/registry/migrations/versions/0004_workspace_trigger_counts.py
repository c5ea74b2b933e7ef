"""Trigger counts on the workspace row, one per quota, so a create's quota check does not count every trigger.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 23:15:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SourceKind: 1 schedule; 2 webhook and 3 event share a quota
BACKFILL = """
UPDATE workspaces SET
  schedule_trigger_count = (
    SELECT count(*) FROM triggers WHERE triggers.workspace_id = workspaces.id AND triggers.source_kind = 1),
  webhook_event_trigger_count = (
    SELECT count(*) FROM triggers WHERE triggers.workspace_id = workspaces.id AND triggers.source_kind IN (2, 3))
"""


def upgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("schedule_trigger_count", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("webhook_event_trigger_count", sa.Integer(), server_default="0", nullable=False))
    op.execute(BACKFILL)


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("webhook_event_trigger_count")
        batch_op.drop_column("schedule_trigger_count")
