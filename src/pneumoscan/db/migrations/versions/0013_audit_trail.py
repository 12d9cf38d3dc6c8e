"""The reading workstation: the audit trail (append-only), reader-alone (blinded) reviews, images' accession.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The action vocabulary as of this revision (domain.AuditAction); a later one that adds an action changes the CHECK.
_ACTIONS = ("open", "review", "calibrate", "user.add", "user.disable", "user.enable", "token.issue", "token.revoke",
            "sign-in", "sign-in.failed", "sign-out")
_NO_UPDATE = "the audit trail is append-only"


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("image_id", sa.Integer),
        sa.Column("detail", sa.Text),
        sa.Column("address", sa.String(64)),
        sa.CheckConstraint(f"action IN ({', '.join(repr(a) for a in _ACTIONS)})", name="ck_audit_events_action"),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_actor", "audit_events", ["actor"])
    op.create_index("ix_audit_events_image_id", "audit_events", ["image_id"])
    # Rows are never changed; the retention prune deletes old ones, nothing updates one.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""CREATE FUNCTION audit_events_no_update() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION '{_NO_UPDATE}'; END $$ LANGUAGE plpgsql""")
        op.execute("CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
                   "FOR EACH ROW EXECUTE FUNCTION audit_events_no_update()")
    else:
        op.execute(f"CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
                   f"BEGIN SELECT RAISE(ABORT, '{_NO_UPDATE}'); END")
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("blinded", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("images") as batch:  # AccessionNumber, or its salted short reference
        batch.add_column(sa.Column("accession", sa.String(64)))
    # The worklist by study: urgent studies by probability, the rest newest first.
    op.create_index("ix_studies_probability", "studies", ["probability"])
    op.create_index("ix_studies_last_instance_at", "studies", ["last_instance_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_studies_last_instance_at", table_name="studies")
    op.drop_index("ix_studies_probability", table_name="studies")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("accession")
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("blinded")
    op.execute("DROP TRIGGER IF EXISTS audit_events_no_update" +
               (" ON audit_events" if op.get_bind().dialect.name == "postgresql" else ""))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_events_no_update()")
    op.drop_table("audit_events")
