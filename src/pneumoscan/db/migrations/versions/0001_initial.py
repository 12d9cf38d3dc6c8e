"""Initial schema: images, predictions and reviews, with indexes for the results filters.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.String(64), unique=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16)),
        sa.Column("byte_size", sa.BigInteger),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("modality", sa.String(16)),
        sa.Column("body_part", sa.String(64)),
        sa.Column("view_position", sa.String(16)),
        sa.Column("study_date", sa.String(8)),
        sa.Column("manufacturer", sa.String(64)),
        sa.Column("patient_ref", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("first_seen_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    for column in ("status", "path", "updated_at", "study_uid", "patient_ref"):
        op.create_index(f"ix_images_{column}", "images", [column])
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("image_id", "model_version", name="uq_predictions_image_model"),
    )
    op.create_index("ix_predictions_model_created", "predictions", ["model_version", "created_at"])
    op.create_index("ix_predictions_model_label_probability", "predictions",
                    ["model_version", "label", "probability"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_reviews_image_id", "reviews", ["image_id"])


def downgrade() -> None:
    op.drop_table("reviews")
    op.drop_table("predictions")
    op.drop_table("images")
