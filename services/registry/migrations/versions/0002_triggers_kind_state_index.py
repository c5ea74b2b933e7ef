"""Index triggers by workspace, source kind and state: quota counts and ListUpcomingRuns read it alone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:10:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("triggers", schema=None) as batch_op:
        batch_op.create_index(
            "ix_triggers_workspace_kind_state", ["workspace_id", "source_kind", "state"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("triggers", schema=None) as batch_op:
        batch_op.drop_index("ix_triggers_workspace_kind_state")
