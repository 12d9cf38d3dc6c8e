"""PostgreSQL: path indexes that LIKE can use, so that a `--path` glob with a fixed prefix is an index range.

A default-collation btree index cannot serve LIKE 'prefix%' outside the C locale; text_pattern_ops
can. SQLite needs no index for this: its LIKE optimization uses the existing path indexes once LIKE is
case-sensitive (set on every connection).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_INDEXES = (("ix_sightings_path_pattern", "sightings"), ("ix_images_path_pattern", "images"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table in _INDEXES:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} (path text_pattern_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _ in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
