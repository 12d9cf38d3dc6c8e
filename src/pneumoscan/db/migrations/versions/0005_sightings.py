"""Sightings: every path a content was seen at, so a copy's result can be found by its own path.

Existing images get one sighting each, at their stored path.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sightings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("first_seen_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=False),
        sa.Column("byte_size", sa.BigInteger),
        sa.Column("mtime", sa.Float),
        sa.UniqueConstraint("image_id", "path", name="uq_sightings_image_path"),
    )
    op.create_index("ix_sightings_path", "sightings", ["path"])
    op.execute("INSERT INTO sightings (image_id, path, first_seen_at, last_seen_at, byte_size) "
               "SELECT id, path, first_seen_at, updated_at, byte_size FROM images WHERE sha256 IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_sightings_path", table_name="sightings")
    op.drop_table("sightings")
