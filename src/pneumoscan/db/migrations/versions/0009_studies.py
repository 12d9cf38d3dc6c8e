"""Studies (DICOM study results, their send state) and the history of each study's results.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_instance_at", _TS, nullable=False),
        sa.Column("completed_at", _TS),
        sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
        sa.Column("instance_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("assessed_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("label", sa.String(16)),
        sa.Column("probability", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("model_version", sa.String(64)),
        sa.Column("send_state", sa.String(16)),
        sa.Column("send_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_send_at", _TS),
        sa.Column("last_send_error", sa.Text),
        sa.Column("sent_at", _TS),
        sa.CheckConstraint("status IN ('open', 'complete')", name="ck_studies_status"),
    )
    op.create_index("ix_studies_status_last_instance", "studies", ["status", "last_instance_at"])
    op.create_index("ix_studies_send", "studies", ["send_state", "next_send_at"])
    op.create_table(
        "study_results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("completed_at", _TS, nullable=False),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("assessed_count", sa.Integer, nullable=False),
        sa.Column("label", sa.String(16)),
        sa.Column("probability", sa.Float),
        sa.Column("model_version", sa.String(64)),
    )
    op.create_index("ix_study_results_study_id", "study_results", ["study_id"])
    # Images stored before this revision get no study: their results were never asked for per study.


def downgrade() -> None:
    op.drop_index("ix_study_results_study_id", table_name="study_results")
    op.drop_table("study_results")
    op.drop_index("ix_studies_send", table_name="studies")
    op.drop_index("ix_studies_status_last_instance", table_name="studies")
    op.drop_table("studies")
