"""Trigger counters kept from the trace stream, and the trace events already counted.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 23:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trigger_stats",
        sa.Column("trigger_id", sa.String(length=64), nullable=False),
        sa.Column("fire_count", sa.BigInteger(), nullable=False),
        sa.Column("skipped_fire_count", sa.BigInteger(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_fire_time_ns", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["triggers.id"],
            name=op.f("fk_trigger_stats_trigger_id_triggers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trigger_id", name=op.f("pk_trigger_stats")),
    )
    op.create_table(
        "applied_trace_events",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_applied_trace_events")),
    )


def downgrade() -> None:
    op.drop_table("applied_trace_events")
    op.drop_table("trigger_stats")
