"""The `sender` role: a machine storing studies by STOW-RS (POST /dicomweb/studies), allowed nothing else.

The users table's role CHECK (made in 0008) takes the new value. A downgrade refuses while a sender
exists: turning a machine's account into a reviewer would let its token read results.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Frozen here as they are at this revision; schema.py derives the current ones from domain.py.
_BEFORE = "('reviewer', 'admin')"
_AFTER = "('reviewer', 'admin', 'sender')"


def _check(roles: str) -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("ck_users_role", type_="check")
        batch.create_check_constraint("ck_users_role", f"role IN {roles}")


def upgrade() -> None:
    _check(_AFTER)


def downgrade() -> None:
    senders = op.get_bind().scalar(sa.text("SELECT count(*) FROM users WHERE role = 'sender'"))
    if senders:
        raise RuntimeError(f"{senders} user(s) have the sender role: disable and rename them before downgrading")
    _check(_BEFORE)
