"""The audit trail's reads and writes: append an event, find events by user, image and time, prune old ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from pneumoscan.db.schema import AuditEvent, utcnow
from pneumoscan.domain import AuditAction

MAX_EVENTS = 1000  # events one query returns at most


@dataclass(frozen=True)
class AuditRow:
    """One event, as a plain row (usable after its session closes)."""

    id: int
    at: datetime
    actor: str | None
    action: str
    image_id: int | None
    detail: str | None
    address: str | None


@dataclass(frozen=True)
class AuditQuery:
    """Which events: by user name, image, action, and time (newest first)."""

    user: str | None = None
    image_id: int | None = None
    action: AuditAction | None = None
    since: datetime | None = None
    limit: int = 200


def add_event(session: Session, action: AuditAction, actor: str | None, address: str | None,
              image_id: int | None = None, detail: str | None = None) -> None:
    """Append one event in ``session``'s transaction (so it commits, or not, with what it records)."""
    session.add(AuditEvent(at=utcnow(), action=action.value, actor=(actor or None) and actor[:128],
                           address=(address or None) and address[:64], image_id=image_id, detail=detail))


def find_events(session: Session, query: AuditQuery) -> list[AuditRow]:
    """The events matching ``query``, newest first, at most ``query.limit`` (capped at MAX_EVENTS)."""
    statement = select(AuditEvent)
    if query.user is not None:
        statement = statement.where(AuditEvent.actor == query.user)
    if query.image_id is not None:
        statement = statement.where(AuditEvent.image_id == query.image_id)
    if query.action is not None:
        statement = statement.where(AuditEvent.action == query.action.value)
    if query.since is not None:
        statement = statement.where(AuditEvent.at >= query.since)
    statement = statement.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(min(query.limit, MAX_EVENTS))
    return [AuditRow(e.id, e.at, e.actor, e.action, e.image_id, e.detail, e.address)
            for e in session.scalars(statement)]


def prune_events(session: Session, before: datetime) -> int:
    """Delete the events older than ``before`` (the retention setting's cut); how many went."""
    result = session.execute(delete(AuditEvent).where(AuditEvent.at < before))
    return int(result.rowcount)  # type: ignore[attr-defined]
