"""Indexes for the results query at scale: probability filters without a label, status in time order.

`predictions (model_version, probability)` finds the few rows a narrow probability filter matches
without reading the others; `images (status, updated_at, id)` lists one status newest first and
stops at the limit, so it replaces the index on status alone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_predictions_model_probability", "predictions", ["model_version", "probability"])
    op.create_index("ix_images_status_updated_at", "images", ["status", "updated_at", "id"])
    op.drop_index("ix_images_status", table_name="images")


def downgrade() -> None:
    op.create_index("ix_images_status", "images", ["status"])
    op.drop_index("ix_images_status_updated_at", table_name="images")
    op.drop_index("ix_predictions_model_probability", table_name="predictions")
