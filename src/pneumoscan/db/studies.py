"""Study results: settle quiet studies, and keep the queue of results to send back to PACS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from pneumoscan.db.schema import Image, Prediction, Sighting, Study, StudyResult, utcnow
from pneumoscan.domain import Label, SendState, Status, StudyStatus

# Retries of a failed send: 10 s, 20 s, 40 s ... up to an hour apart, for as long as it takes.
FIRST_RETRY, LONGEST_RETRY = 10.0, 3600.0


def settle(session: Session, model_version: str, stable_seconds: float, *, send: bool,
           now: datetime | None = None) -> list[Study]:
    """Give every open study that has been quiet for ``stable_seconds`` its result; queue it to send if ``send``.

    The result is over the study's assessed instances (classified by ``model_version``; lateral views
    are stored as not assessed and do not count): PNEUMONIA if any instance is, with the highest
    probability. A study with no assessed instance completes with no label, and nothing is sent for it.
    """
    now = now or utcnow()
    quiet = session.scalars(select(Study).where(Study.status == StudyStatus.OPEN,
                                                Study.last_instance_at <= now - timedelta(seconds=stable_seconds))
                            .order_by(Study.id).with_for_update(skip_locked=True)).all()
    for study in quiet:
        instances = session.scalar(select(func.count()).select_from(Image).where(Image.study_uid == study.study_uid))
        scored = session.execute(
            select(Prediction.probability, Prediction.label, Prediction.threshold)
            .join(Image, Image.id == Prediction.image_id)
            .where(Image.study_uid == study.study_uid, Image.status == Status.DONE,
                   Prediction.model_version == model_version)).all()
        top = max(scored, key=lambda row: row.probability, default=None)
        study.status, study.completed_at, study.revision = StudyStatus.COMPLETE, now, study.revision + 1
        study.instance_count, study.assessed_count = int(instances or 0), len(scored)
        study.model_version = model_version
        study.probability = float(top.probability) if top else None
        study.threshold = float(top.threshold) if top else None
        study.label = (Label.PNEUMONIA if any(r.label == Label.PNEUMONIA for r in scored) else Label.NORMAL) \
            if scored else None
        session.add(StudyResult(study_id=study.id, revision=study.revision, completed_at=now,
                                instance_count=study.instance_count, assessed_count=study.assessed_count,
                                label=study.label, probability=study.probability, model_version=model_version))
        if send and scored:  # a study with nothing assessed (a CT, only laterals) sends PACS nothing
            study.send_state, study.send_attempts, study.next_send_at = SendState.PENDING, 0, now
            study.last_send_error = None
    session.flush()
    return list(quiet)


def due(session: Session, limit: int = 20, now: datetime | None = None) -> list[Study]:
    """Completed studies whose result is waiting to be sent and due now, locked for this sender."""
    now = now or utcnow()
    return list(session.scalars(
        select(Study).where(Study.status == StudyStatus.COMPLETE,
                            Study.send_state.in_([SendState.PENDING, SendState.RETRYING]),
                            or_(Study.next_send_at.is_(None), Study.next_send_at <= now))
        .order_by(Study.next_send_at, Study.id).limit(limit).with_for_update(skip_locked=True)))


def mark_sent(study: Study, now: datetime | None = None) -> None:
    study.send_state, study.sent_at, study.last_send_error, study.next_send_at = SendState.SENT, now or utcnow(), \
        None, None


def mark_failed(study: Study, error: str, now: datetime | None = None) -> float:
    """Count a failed attempt and schedule the next one with exponential backoff; returns the delay in seconds."""
    study.send_attempts += 1
    delay = min(LONGEST_RETRY, FIRST_RETRY * 2 ** (study.send_attempts - 1))
    study.send_state, study.last_send_error = SendState.RETRYING, error[:500]
    study.next_send_at = (now or utcnow()) + timedelta(seconds=delay)
    return delay


@dataclass(frozen=True)
class Instance:
    """A stored instance of a study: where its file is, and what the model said about it."""

    image_id: int
    sop_instance_uid: str | None
    paths: list[str]
    sha256: str | None
    status: str
    label: str | None
    probability: float | None


def instances(session: Session, study_uid: str, model_version: str) -> list[Instance]:
    """The instances of a study, with every path their content was seen at (the stored one first)."""
    rows = session.execute(
        select(Image.id, Image.sop_instance_uid, Image.path, Image.sha256, Image.status, Prediction.label,
               Prediction.probability)
        .outerjoin(Prediction, (Prediction.image_id == Image.id) & (Prediction.model_version == model_version))
        .where(Image.study_uid == study_uid).order_by(Image.id)).all()
    seen: dict[int, list[str]] = {}
    for image_id, path in session.execute(select(Sighting.image_id, Sighting.path)
                                          .where(Sighting.image_id.in_([r.id for r in rows]))):
        seen.setdefault(image_id, []).append(path)
    return [Instance(r.id, r.sop_instance_uid, list(dict.fromkeys([r.path, *seen.get(r.id, [])])), r.sha256,
                     r.status, r.label, r.probability) for r in rows]


STUDY_FIELDS = ("study_uid", "status", "instance_count", "assessed_count", "label", "probability", "model_version",
                "completed_at", "revision", "send_state", "send_attempts", "next_send_at", "last_send_error",
                "sent_at")


def list_studies(session: Session, limit: int | None = 100) -> list[dict[str, Any]]:
    """Studies, last completed (or still open) first."""
    statement = select(Study).order_by(Study.last_instance_at.desc(), Study.id.desc())
    if limit:
        statement = statement.limit(limit)
    return [{name: getattr(study, name) for name in STUDY_FIELDS} for study in session.scalars(statement)]
