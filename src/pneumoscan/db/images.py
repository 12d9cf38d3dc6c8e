"""Reads of one stored image for the review web app: its detail, its reviews, where its bytes are, the next case."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from pneumoscan.db.results import ResultFilter, query_results
from pneumoscan.db.reviews import UnknownImage, reviews_of
from pneumoscan.db.schema import Image, Prediction, Review, Sighting
from pneumoscan.domain import DICOM_COLUMNS, ReviewState, Sort


@dataclass(frozen=True)
class PredictionRow:
    """One model version's reading of an image."""

    model_version: str
    label: str
    probability: float
    threshold: float
    created_at: datetime


@dataclass(frozen=True)
class SightingRow:
    """A path the image's content was seen at."""

    path: str
    first_seen_at: datetime
    last_seen_at: datetime
    byte_size: int | None


@dataclass(frozen=True)
class ReviewRow:
    """One review of an image (append-only: a correction is a later row)."""

    id: int
    label: str
    comment: str | None
    reviewer: str
    created_at: datetime


@dataclass(frozen=True)
class ImageDetail:
    """Everything stored about one image: status, DICOM fields, predictions, paths and reviews, oldest first."""

    id: int
    sha256: str | None
    kind: str | None
    byte_size: int | None
    status: str
    reason: str | None
    path: str
    first_seen_at: datetime
    updated_at: datetime
    dicom: dict[str, str | None]
    predictions: list[PredictionRow]
    paths: list[SightingRow]
    reviews: list[ReviewRow]


def review_row(review: Review) -> ReviewRow:
    """A review as a plain row (usable after its session closes)."""
    return ReviewRow(review.id, review.label, review.comment, review.reviewer, review.created_at)


def image_detail(session: Session, image_id: int) -> ImageDetail | None:
    """Everything stored about one image; None when there is no image with this id."""
    image = session.get(Image, image_id)
    if image is None:
        return None
    predictions = session.scalars(select(Prediction).where(Prediction.image_id == image_id)
                                  .order_by(Prediction.created_at, Prediction.id)).all()
    sightings = session.scalars(select(Sighting).where(Sighting.image_id == image_id)
                                .order_by(Sighting.first_seen_at, Sighting.id)).all()
    return ImageDetail(
        id=image.id, sha256=image.sha256, kind=image.kind, byte_size=image.byte_size, status=image.status,
        reason=image.reason, path=image.path, first_seen_at=image.first_seen_at, updated_at=image.updated_at,
        dicom={name: getattr(image, name) for name in DICOM_COLUMNS},
        predictions=[PredictionRow(p.model_version, p.label, p.probability, p.threshold, p.created_at)
                     for p in predictions],
        paths=[SightingRow(s.path, s.first_seen_at, s.last_seen_at, s.byte_size) for s in sightings],
        reviews=image_reviews(session, image_id) or [])


def image_reviews(session: Session, image_id: int) -> list[ReviewRow] | None:
    """Every review of an image, oldest first; None when there is no image with this id."""
    if session.get(Image, image_id) is None:
        return None
    return [review_row(r) for r in reviews_of(session, image_id)]


def reviewed_by(session: Session, image_id: int, reviewer: str) -> bool:
    """Whether ``reviewer`` has saved a reading of the image (a blinded reader then sees the model's call)."""
    return session.scalar(select(Review.id).where(Review.image_id == image_id, Review.reviewer == reviewer)
                          .limit(1)) is not None


def content_hash(session: Session, image_id: int) -> str | None:
    """The image's SHA-256 (None for a file that could never be read); UnknownImage when there is no such id."""
    sha256 = session.scalar(select(Image.sha256).where(Image.id == image_id))
    if sha256 is None and session.get(Image, image_id) is None:
        raise UnknownImage(f"no image with id {image_id}")
    return sha256


def picture_paths(session: Session, image_id: int) -> list[str]:
    """Every path the image's content was seen at: the stored one first, then the last seen first."""
    stored = session.scalar(select(Image.path).where(Image.id == image_id))
    seen = session.scalars(select(Sighting.path).where(Sighting.image_id == image_id)
                           .order_by(Sighting.last_seen_at.desc())).all()
    return [p for p in dict.fromkeys([stored, *seen]) if p]


def next_case(session: Session, model_version: str, after: int) -> int | None:
    """The most suspicious unreviewed case of ``model_version`` other than ``after``."""
    rows = query_results(session, ResultFilter(model_version=model_version, review=ReviewState.UNREVIEWED,
                                               sort=Sort.PROBABILITY, limit=2))
    return next((int(r["id"]) for r in rows if r["id"] != after), None)


def ping(session: Session) -> None:
    """Raise the driver's error (SQLAlchemyError) when the database does not answer."""
    session.execute(text("SELECT 1"))
