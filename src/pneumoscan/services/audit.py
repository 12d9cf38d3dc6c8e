"""The audit trail as every adapter uses it: record an event, search it, and prune it by the retention setting."""

from __future__ import annotations

from datetime import timedelta

from pneumoscan.config import Settings
from pneumoscan.db import Database
from pneumoscan.db.audit import AuditQuery, AuditRow, add_event, find_events, prune_events
from pneumoscan.db.schema import utcnow
from pneumoscan.domain import AuditAction

CLI_ADDRESS = "cli"  # the address of an event recorded by the `pneumoscan` command


def record(db: Database, action: AuditAction, actor: str | None, address: str | None, image_id: int | None = None,
           detail: str | None = None) -> None:
    """Append one event in a transaction of its own."""
    with db.begin() as session:
        add_event(session, action, actor, address, image_id, detail)


def search(db: Database, query: AuditQuery) -> list[AuditRow]:
    """The events matching ``query``, newest first."""
    with db() as session:
        return find_events(session, query)


def prune(db: Database, settings: Settings) -> int:
    """Delete events older than PNEUMOSCAN_AUDIT_RETENTION_DAYS (0: keep every event); how many went."""
    if settings.audit_retention_days == 0:
        return 0
    with db.begin() as session:
        return prune_events(session, utcnow() - timedelta(days=settings.audit_retention_days))
