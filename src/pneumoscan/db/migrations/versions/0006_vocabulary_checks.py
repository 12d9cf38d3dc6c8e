"""CHECK constraints from the one vocabulary (pneumoscan.domain): image statuses and reading labels.

The unused statuses `pending` and `queued` are gone (nothing ever wrote them; the outbox holds what
is queued). A row that still had one, from a hand edit, becomes `failed` so the nightly job retries it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen here as they were at this revision; schema.py derives the current ones from domain.py.
_STATUSES = "('done', 'failed', 'rejected')"
_LABELS = "('NORMAL', 'PNEUMONIA')"


def upgrade() -> None:
    op.execute(f"UPDATE images SET status = 'failed', reason = 'left in an old status; retried' "
               f"WHERE status NOT IN {_STATUSES}")
    with op.batch_alter_table("images") as batch:
        batch.create_check_constraint("ck_images_status", f"status IN {_STATUSES}")
    with op.batch_alter_table("predictions") as batch:
        batch.create_check_constraint("ck_predictions_label", f"label IN {_LABELS}")
    with op.batch_alter_table("reviews") as batch:
        batch.create_check_constraint("ck_reviews_label", f"label IN {_LABELS}")


def downgrade() -> None:
    for table, name in (("reviews", "ck_reviews_label"), ("predictions", "ck_predictions_label"),
                        ("images", "ck_images_status")):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(name, type_="check")
