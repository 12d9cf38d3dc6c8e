"""Reads of one stored image for the review web app: its detail, its reviews, where its bytes are, the next case."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from pneumoscan.db.results import ResultFilter, query_results
from pneumoscan.db.reviews import UnknownImage, reviews_of
from pneumoscan.db.schema import Image, Prediction, Review, Sighting, Study
from pneumoscan.domain import DICOM_COLUMNS, Domain, ReviewState, Sort


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
    domain: str | None  # the domain gate's verdict at the latest classification: in, out, or none
    domain_score: float | None
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
        dicom={name: getattr(image, name) for name in DICOM_COLUMNS}, domain=image.domain,
        domain_score=image.domain_score,
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


def reviewed_among(session: Session, image_ids: list[int], reviewer: str) -> set[int]:
    """Those of ``image_ids`` that ``reviewer`` has saved a reading of (one query for a page of results)."""
    if not image_ids:
        return set()
    return set(session.scalars(select(Review.image_id).where(Review.image_id.in_(set(image_ids)),
                                                             Review.reviewer == reviewer).distinct()))


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


PATIENT_SHOWN = 8  # characters of the salted patient hash a reader sees: enough to tell patients apart on a page


@dataclass(frozen=True)
class StudyContext:
    """What a reader finds a study by: one row of the worklist by study."""

    study_uid: str
    status: str
    study_date: str | None
    modality: str | None
    views: list[str]
    instance_count: int
    assessed_count: int
    label: str | None
    probability: float | None
    patient: str | None  # a short reference: the first characters of the salted PatientID hash
    accession: str | None  # AccessionNumber, or its salted short reference (PNEUMOSCAN_STORE_ACCESSION)
    urgent: bool
    send_state: str | None = None  # its result on its way to PACS: failed shows the peer's reason
    send_error: str | None = None
    out_of_domain: bool = False  # an instance is outside the validated population (the domain gate)


def study_worklist(session: Session, urgent_at: float | None, limit: int = 200) -> list[StudyContext]:
    """Studies, the urgent ones (probability at or above ``urgent_at``) first, then the most recent; with
    ``urgent_at`` None (blinded reading), no urgent bucket: the most recent first.

    The study's date, modality, views and patient come from its instances (by the study_uid index).
    """
    # Two index reads rather than one sort of every study: the urgent ones (by probability), then the rest
    # newest first (by last_instance_at, stopping at the page's end). Without a bucket, the second read alone.
    newest = (Study.last_instance_at.desc(), Study.id.desc())
    if urgent_at is None:
        studies = list(session.scalars(select(Study).order_by(*newest).limit(limit)))
    else:
        studies = list(session.scalars(select(Study).where(Study.probability >= urgent_at).order_by(*newest)
                                       .limit(limit)))
        if len(studies) < limit:
            calm = or_(Study.probability < urgent_at, Study.probability.is_(None))
            studies += session.scalars(select(Study).where(calm).order_by(*newest).limit(limit - len(studies)))
    keys = ("date", "modality", "views", "patient", "accession", "domain")
    context: dict[str, dict[str, set[str]]] = {s.study_uid: {key: set() for key in keys} for s in studies}
    if studies:
        rows = session.execute(select(Image.study_uid, Image.study_date, Image.modality, Image.view_position,
                                      Image.patient_ref, Image.accession, Image.domain)
                               .where(Image.study_uid.in_(list(context))).distinct())
        for uid, *seen in rows:
            if uid is None:
                continue
            for key, value in zip(keys, seen, strict=True):
                if value:
                    context[uid][key].add(value)
    out = []
    for s in studies:
        found = context[s.study_uid]
        out.append(StudyContext(
            study_uid=s.study_uid, status=s.status, study_date=min(found["date"], default=None),
            modality="/".join(sorted(found["modality"])) or None, views=sorted(found["views"]),
            instance_count=s.instance_count, assessed_count=s.assessed_count, label=s.label,
            probability=s.probability, patient=(min(found["patient"])[:PATIENT_SHOWN] if found["patient"] else None),
            accession=min(found["accession"], default=None),
            urgent=urgent_at is not None and s.probability is not None and s.probability >= urgent_at,
            send_state=s.send_state,
            send_error=s.last_send_error, out_of_domain=Domain.OUT in found["domain"]))
    return out


def urgent_counts(session: Session, model_version: str, urgent_at: float) -> dict[str, int]:
    """How many studies, and how many unreviewed images of ``model_version``, are at or above ``urgent_at``."""
    studies = session.scalar(select(func.count()).select_from(Study).where(Study.probability >= urgent_at))
    urgent = (Prediction.model_version == model_version, Prediction.probability >= urgent_at)
    # All urgent ones (an index range) less the reviewed ones (few): not a review lookup per urgent image.
    images = session.scalar(select(func.count()).select_from(Prediction).where(*urgent))
    reviewed = session.scalar(select(func.count(func.distinct(Review.image_id)))
                              .join(Prediction, Prediction.image_id == Review.image_id).where(*urgent))
    return {"studies": int(studies or 0), "images": int(images or 0) - int(reviewed or 0)}


@dataclass(frozen=True)
class Instance:
    """An image of the same study, for the viewer's strip: what it shows and whether the model assessed it."""

    id: int
    view_position: str | None
    status: str
    assessed: bool


def study_instances(session: Session, image_id: int, model_version: str, limit: int = 24) -> list[Instance]:
    """Every image of ``image_id``'s study (itself included), by id; [] for an image without a study."""
    study_uid = session.scalar(select(Image.study_uid).where(Image.id == image_id))
    if not study_uid:
        return []
    predicted = select(Prediction.id).where(Prediction.image_id == Image.id,
                                            Prediction.model_version == model_version).exists()
    rows = session.execute(select(Image.id, Image.view_position, Image.status, predicted)
                           .where(Image.study_uid == study_uid).order_by(Image.id).limit(limit))
    return [Instance(int(i), view, status, bool(assessed)) for i, view, status, assessed in rows]
