"""Reviews and site operating points: people's readings, and the thresholds fitted on them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from pneumoscan.db.results import latest_reviews
from pneumoscan.db.schema import Image, OperatingPoint, Prediction, Review, utcnow
from pneumoscan.db.studies import reassess_relabelled
from pneumoscan.domain import LABELS, Label


class UnknownImage(LookupError):
    """No stored image has the id asked for."""


def add_review(session: Session, image_id: int, reviewer: str, label: str, comment: str | None) -> Review:
    """Append a review; a correction is a later review of the same image, never an edit."""
    if session.get(Image, image_id) is None:
        raise UnknownImage(f"no image with id {image_id} (see `pneumoscan results` for ids)")
    if label not in LABELS:
        raise ValueError(f"label must be NORMAL or PNEUMONIA, not {label!r}")
    review = Review(image_id=image_id, reviewer=reviewer.strip(), label=label, comment=comment or None)
    session.add(review)
    session.flush()
    return review


@dataclass(frozen=True)
class ReviewedCase:
    """An image's latest review beside the model's stored probability for it."""

    review_id: int
    image_id: int
    label: int  # 1 for PNEUMONIA
    probability: float


def reviewed_cases(session: Session, model_version: str) -> list[ReviewedCase]:
    """The latest review of every image that ``model_version`` has a prediction for."""
    latest = latest_reviews()
    rows = session.execute(
        select(latest.c.review_id, Review.image_id, Review.label, Prediction.probability)
        .join(Review, Review.id == latest.c.review_id)
        .join(Prediction, (Prediction.image_id == Review.image_id) & (Prediction.model_version == model_version))
        .order_by(latest.c.review_id))
    return [ReviewedCase(int(r), int(i), int(label == Label.PNEUMONIA), float(p)) for r, i, label, p in rows]


def active_point(session: Session, model_version: str) -> OperatingPoint | None:
    """The operating point in force for ``model_version``, or None (the card's threshold applies)."""
    return session.scalars(
        select(OperatingPoint).where(OperatingPoint.model_version == model_version,
                                     OperatingPoint.undone_at.is_(None))
        .order_by(OperatingPoint.id.desc()).limit(1)).first()


def relabel(session: Session, model_version: str, threshold: float) -> int:
    """Set every prediction of ``model_version`` to ``threshold`` and the label it gives; returns how many changed."""
    new_label = case((Prediction.probability >= threshold, Label.PNEUMONIA.value), else_=Label.NORMAL.value)
    changed = session.execute(
        select(func.count()).select_from(Prediction)
        .where(Prediction.model_version == model_version, Prediction.label != new_label)).scalar_one()
    reassess_relabelled(session, model_version, new_label)  # a study whose label flips sends its result again
    session.execute(update(Prediction).where(Prediction.model_version == model_version)
                    .values(label=new_label, threshold=threshold))
    return int(changed)


def record_point(session: Session, model_version: str, threshold: float, card_threshold: float,
                 target_sensitivity: float, cases: list[ReviewedCase], figures: dict[str, Any]) -> OperatingPoint:
    """Put a new operating point in force and relabel the model's existing predictions with it."""
    current = active_point(session, model_version)
    point = OperatingPoint(
        model_version=model_version, threshold=threshold,
        previous_threshold=current.threshold if current else card_threshold,
        target_sensitivity=target_sensitivity, review_ids=json.dumps([c.review_id for c in cases]),
        figures=json.dumps(figures), relabelled=0)
    point.relabelled = relabel(session, model_version, threshold)
    session.add(point)
    session.flush()
    return point


def undo_point(session: Session, model_version: str, card_threshold: float) -> tuple[OperatingPoint, float, int]:
    """Withdraw the point in force; the one before it (or the card) applies again, to existing labels too.

    Returns (the withdrawn point, the threshold now in force, predictions whose label changed).
    """
    current = active_point(session, model_version)
    if current is None:
        raise LookupError(f"no site operating point is in force for {model_version}: it uses its card's "
                          f"threshold {card_threshold:.4f}")
    current.undone_at = utcnow()
    session.flush()
    previous = active_point(session, model_version)
    threshold = previous.threshold if previous else card_threshold
    return current, threshold, relabel(session, model_version, threshold)


def history(session: Session, model_version: str) -> list[OperatingPoint]:
    """Every operating point ever fitted for ``model_version``, oldest first."""
    return list(session.scalars(select(OperatingPoint).where(OperatingPoint.model_version == model_version)
                                .order_by(OperatingPoint.id)))


def reviews_of(session: Session, image_id: int) -> list[Review]:
    """Every review of an image, oldest first: who said what, and when."""
    return list(session.scalars(select(Review).where(Review.image_id == image_id).order_by(Review.id)))


def agreement(session: Session, model_version: str) -> dict[str, dict[str, int]]:
    """The model's labels against the latest review of each image it predicted: counts[reviewer][model]."""
    latest = latest_reviews()
    rows = session.execute(
        select(Review.label, Prediction.label, func.count())
        .select_from(latest).join(Review, Review.id == latest.c.review_id)
        .join(Prediction, (Prediction.image_id == Review.image_id) & (Prediction.model_version == model_version))
        .group_by(Review.label, Prediction.label))
    counts = {truth: dict.fromkeys(LABELS, 0) for truth in LABELS}
    for truth, predicted, n in rows:
        counts[truth][predicted] = int(n)
    return counts


def reader_alone_agreement(session: Session, model_version: str) -> dict[str, dict[str, int]]:
    """The model's labels against every blinded review (saved before its reader saw the call): counts[reader][model]."""
    rows = session.execute(
        select(Review.label, Prediction.label, func.count())
        .join(Prediction, (Prediction.image_id == Review.image_id) & (Prediction.model_version == model_version))
        .where(Review.blinded.is_(True))
        .group_by(Review.label, Prediction.label))
    counts = {truth: dict.fromkeys(LABELS, 0) for truth in LABELS}
    for truth, predicted, n in rows:
        counts[truth][predicted] = int(n)
    return counts
