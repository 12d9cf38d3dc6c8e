"""The outbox of files handed to the broker (queued_files), so that no lost message loses a file.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "queued_files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("enqueued_at", _TS, nullable=False),
        sa.Column("claimed_at", _TS),
        sa.Column("attempts", sa.Integer, nullable=False),
    )
    op.create_index("ix_queued_files_enqueued_at", "queued_files", ["enqueued_at"])


def downgrade() -> None:
    op.drop_index("ix_queued_files_enqueued_at", table_name="queued_files")
    op.drop_table("queued_files")
