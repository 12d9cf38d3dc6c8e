"""Absolute paths: rows stored with a relative path (before 2026-12-01) are made absolute where possible.

A relative path means nothing without the folder it was typed in. This resolves each one against
the folder the migration runs in; a row is fixed only when the file really is there (links are not
followed). The rows that cannot be fixed are reported by count and example: scanning their folder
again (`pneumoscan scan FOLDER`) records their absolute paths.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import logging
import os

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

log = logging.getLogger("pneumoscan.db.migrations")


def _fix(table: str) -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.text(f"SELECT id, path FROM {table} WHERE path NOT LIKE '/%'")).all()
    unresolved = []
    for row_id, path in rows:
        absolute = os.path.abspath(path)
        if os.path.lexists(absolute):
            connection.execute(sa.text(f"UPDATE {table} SET path = :path WHERE id = :id"),
                               {"path": absolute, "id": row_id})
        else:
            unresolved.append(path)
    if unresolved:
        log.warning("%d %s rows keep a relative path that is not a file under %s (e.g. %s); scan their "
                    "folder again (`pneumoscan scan FOLDER`) to record their absolute paths",
                    len(unresolved), table, os.getcwd(), ", ".join(unresolved[:3]))


def upgrade() -> None:
    for table in ("images", "sightings"):
        _fix(table)


def downgrade() -> None:
    """Nothing to undo: absolute paths are valid at every revision."""
