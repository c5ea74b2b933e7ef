"""Executor tables: why a run was skipped (overlap, daily cap, paused), on the run and on its trace events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 23:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("runs", "trace_events"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("skip_reason", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    for table in ("trace_events", "runs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("skip_reason")
