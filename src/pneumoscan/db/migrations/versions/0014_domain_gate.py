"""The domain gate: each image's verdict (in or out of the validated population), its score, and the age band.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("age_band", sa.String(16)))  # the age at the study as a band, never the age
        batch.add_column(sa.Column("domain", sa.String(3)))
        batch.add_column(sa.Column("domain_score", sa.Float))
        batch.create_check_constraint("ck_images_domain", "domain IN ('in', 'out')")


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("ck_images_domain", type_="check")
        batch.drop_column("domain_score")
        batch.drop_column("domain")
        batch.drop_column("age_band")
