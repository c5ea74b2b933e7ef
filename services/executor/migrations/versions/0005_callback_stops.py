"""Executor tables: notify_urls that answered 410 Gone for a trigger, so callbacks stay stopped after a restart.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 23:20:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "callback_stops",
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("trigger_id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "trigger_id", "url", name=op.f("pk_callback_stops")),
    )


def downgrade() -> None:
    op.drop_table("callback_stops")
