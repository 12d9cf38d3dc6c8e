"""The outbox: files handed to the broker are recorded first, settled with their result, and re-sent when stale."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from pneumoscan.db.schema import QueuedFile, utcnow
from pneumoscan.db.writes import dialect_insert
from pneumoscan.domain import display_path


def record(session: Session, paths: Sequence[str], now: datetime | None = None) -> None:
    """Mark ``paths`` as handed to the broker now (again, for known ones: one more attempt)."""
    if not paths:
        return
    now = now or utcnow()
    statement = dialect_insert(session, QueuedFile.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=["path"],
        set_={"enqueued_at": now, "claimed_at": None, "attempts": QueuedFile.__table__.c.attempts + 1})
    rows = [{"path": p, "enqueued_at": now, "attempts": 1} for p in dict.fromkeys(map(display_path, paths))]
    session.execute(statement, rows)


def claim(session: Session, paths: Sequence[str], now: datetime | None = None) -> None:
    """A worker started on ``paths``: their staleness now counts from this moment."""
    if paths:
        session.execute(update(QueuedFile).where(QueuedFile.path.in_([display_path(p) for p in paths]))
                        .values(claimed_at=now or utcnow()))


def settle(session: Session, paths: Sequence[str]) -> None:
    """``paths`` have their results stored (in this same transaction): they leave the outbox."""
    if paths:
        session.execute(delete(QueuedFile).where(QueuedFile.path.in_([display_path(p) for p in paths])))


def stale(session: Session, older_than: float, *, claimed_only: bool = False, limit: int = 10_000,
          now: datetime | None = None) -> list[str]:
    """Paths still unsettled ``older_than`` seconds after a worker claimed them or, when nobody has,
    after they were handed over; ``claimed_only`` leaves out the ones never claimed."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than)
    dead_worker = QueuedFile.claimed_at < cutoff
    condition = dead_worker if claimed_only else or_(
        dead_worker, QueuedFile.claimed_at.is_(None) & (QueuedFile.enqueued_at < cutoff))
    return list(session.scalars(select(QueuedFile.path).where(condition).order_by(QueuedFile.id).limit(limit)))


def pending_count(session: Session) -> tuple[int, datetime | None]:
    """(files waiting in the outbox, when the oldest of them was handed over)."""
    statement = select(func.count(), func.min(QueuedFile.enqueued_at)).select_from(QueuedFile)
    count, oldest = session.execute(statement).one()
    return int(count), oldest
