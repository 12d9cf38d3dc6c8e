"""Results in the PACS: the `ignored` image status, when a study's result was last reassessed, which instances it
assessed, and the UIDs of the report and heatmap sent for each revision (pneumoscan's own outputs).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# Frozen here as they are at this revision; schema.py derives the current ones from domain.py.
_STATUSES = "('done', 'failed', 'rejected', 'ignored')"
_OLD_STATUSES = "('done', 'failed', 'rejected')"
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("ck_images_status", type_="check")
        batch.create_check_constraint("ck_images_status", f"status IN {_STATUSES}")
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("reassessed_at", _TS))
        batch.add_column(sa.Column("assessed_key", sa.String(64)))
    with op.batch_alter_table("study_results") as batch:
        batch.add_column(sa.Column("threshold", sa.Float))
        batch.add_column(sa.Column("assessed_key", sa.String(64)))
        batch.add_column(sa.Column("report_uid", sa.String(64)))
        batch.add_column(sa.Column("capture_uid", sa.String(64)))
        batch.add_column(sa.Column("sent_at", _TS))
    op.create_index("ix_study_results_report_uid", "study_results", ["report_uid"])
    op.create_index("ix_study_results_capture_uid", "study_results", ["capture_uid"])


def downgrade() -> None:
    op.drop_index("ix_study_results_capture_uid", table_name="study_results")
    op.drop_index("ix_study_results_report_uid", table_name="study_results")
    with op.batch_alter_table("study_results") as batch:
        for name in ("sent_at", "capture_uid", "report_uid", "assessed_key", "threshold"):
            batch.drop_column(name)
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("assessed_key")
        batch.drop_column("reassessed_at")
    op.execute("UPDATE images SET status = 'rejected' WHERE status = 'ignored'")
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("ck_images_status", type_="check")
        batch.create_check_constraint("ck_images_status", f"status IN {_OLD_STATUSES}")
