"""Dashboard and metrics figures: recent activity, and counts by status, prediction and review label."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pneumoscan.db.schema import Image, Prediction, Review, Sighting


@dataclass(frozen=True)
class Activity:
    """One prediction of the dashboard's window: when it was made, and for a file's first result, when the
    file was written (its earliest sighting's mtime, as a POSIX time), which makes the drop-to-result latency."""

    classified_at: float
    written_at: float | None


def activity(session: Session, model_version: str, since: datetime) -> list[Activity]:
    """Predictions of ``model_version`` made since ``since``, oldest first.

    A first result is one stored in the same transaction that first stored its image (the two share
    one timestamp); reclassifications have no ``written_at``, as their latency would be the file's age.
    """
    written = (select(func.min(Sighting.mtime)).where(Sighting.image_id == Image.id)
               .correlate(Image).scalar_subquery())
    rows = session.execute(
        select(Prediction.created_at, Image.first_seen_at, written)
        .join(Image, Image.id == Prediction.image_id)
        .where(Prediction.model_version == model_version, Prediction.created_at >= since)
        .order_by(Prediction.created_at))
    out = []
    for classified_at, first_seen_at, mtime in rows:
        at = _posix(classified_at)
        first = abs(at - _posix(first_seen_at)) < 1e-3
        out.append(Activity(at, float(mtime) if first and mtime is not None and mtime <= at else None))
    return out


def _posix(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def status_counts(session: Session) -> dict[str, int]:
    """Stored images by status."""
    return {str(s): int(n) for s, n in session.execute(select(Image.status, func.count()).group_by(Image.status))}


def prediction_counts(session: Session) -> dict[tuple[str, str], int]:
    """Predictions by (model version, label)."""
    rows = session.execute(select(Prediction.model_version, Prediction.label, func.count())
                           .group_by(Prediction.model_version, Prediction.label))
    return {(str(v), str(label)): int(n) for v, label, n in rows}


def review_counts(session: Session) -> dict[str, int]:
    """Reviews stored, by the label the reviewer gave."""
    return {str(label): int(n) for label, n in
            session.execute(select(Review.label, func.count()).group_by(Review.label))}
