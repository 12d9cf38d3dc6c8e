"""Site operating points: thresholds fitted on reviewed cases, kept as an auditable, undoable history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "operating_points",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("previous_threshold", sa.Float, nullable=False),
        sa.Column("target_sensitivity", sa.Float, nullable=False),
        sa.Column("review_ids", sa.Text, nullable=False),
        sa.Column("figures", sa.Text, nullable=False),
        sa.Column("relabelled", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("undone_at", _TS),
    )
    op.create_index("ix_operating_points_model", "operating_points", ["model_version", "id"])


def downgrade() -> None:
    op.drop_index("ix_operating_points_model", table_name="operating_points")
    op.drop_table("operating_points")
