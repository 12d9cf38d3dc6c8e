"""Study results: settle quiet studies, and keep the queue of results to send back to PACS."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from pneumoscan.db.schema import Image, Prediction, QueuedFile, Sighting, Study, StudyResult, utcnow
from pneumoscan.domain import Label, SendState, Status, StudyStatus

# Retries of a refused send: the first after PNEUMOSCAN_RESULTS_RETRY_SECONDS, each later one twice as long after
# the one before, at most an hour apart; after PNEUMOSCAN_RESULTS_MAX_ATTEMPTS attempts the result is failed.
FIRST_RETRY, LONGEST_RETRY = 10.0, 3600.0


@dataclass(frozen=True)
class Assessment:
    """What a study's result says now, over its counted instances (ignored ones are not counted)."""

    instance_count: int
    assessed_count: int
    label: Label | None
    probability: float | None
    threshold: float | None
    assessed_key: str | None  # SHA-256 of the assessed instances' SOP Instance UIDs, sorted


def assess(session: Session, study_uid: str, model_version: str) -> Assessment:
    """The result of a study over its assessed instances (classified by ``model_version``; lateral views are
    stored as not assessed and do not count): PNEUMONIA if any instance is, with the highest probability."""
    counted = session.scalar(select(func.count()).select_from(Image).where(Image.study_uid == study_uid,
                                                                         Image.status != Status.IGNORED))
    scored = session.execute(
        select(Image.id, Image.sop_instance_uid, Prediction.probability, Prediction.label, Prediction.threshold)
        .join(Image, Image.id == Prediction.image_id)
        .where(Image.study_uid == study_uid, Image.status == Status.DONE,
               Prediction.model_version == model_version)).all()
    top = max(scored, key=lambda row: row.probability, default=None)
    label = (Label.PNEUMONIA if any(r.label == Label.PNEUMONIA for r in scored) else Label.NORMAL) if scored else None
    key = hashlib.sha256("\n".join(sorted(r.sop_instance_uid or f"#{r.id}" for r in scored)).encode()).hexdigest() \
        if scored else None
    return Assessment(int(counted or 0), len(scored), label, float(top.probability) if top else None,
                      float(top.threshold) if top else None, key)


def changed(study: Study, now: Assessment, model_version: str, tolerance: float) -> bool:
    """Whether ``now`` says something other than the study's current result: its label, its model version, the set
    of assessed instances, or its probability by more than ``tolerance``. A threshold that moved without flipping the
    label changes nothing a reader acts on."""
    if study.revision == 0:
        return True
    if (study.label, study.model_version) != (now.label, model_version):
        return True
    if study.assessed_key is not None and study.assessed_key != now.assessed_key:
        return True
    if study.assessed_key is None and study.assessed_count != now.assessed_count:  # settled before 0011
        return True
    if (study.probability is None) != (now.probability is None):
        return True
    return study.probability is not None and now.probability is not None \
        and abs(study.probability - now.probability) > tolerance


def settle(session: Session, model_version: str, stable_seconds: float, *, send: bool, tolerance: float = 0.0,
           now: datetime | None = None) -> list[Study]:
    """Settle the studies that are due; returns those given a new result (a new revision, queued to send if ``send``).

    Due: an open study whose last instance *arrived* ``stable_seconds`` ago or more and every instance of which has a
    result (no file handed to the workers within its window is still waiting in the outbox), and a complete study
    one of whose instances got a new result (``reassessed_at``) that long ago. A study whose result says what it
    said before (see ``changed``) is complete again as it was: same revision, nothing sent. A study with no
    assessed instance completes with no label, and nothing is sent for it.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stable_seconds)
    due_now = or_(and_(Study.status == StudyStatus.OPEN, Study.last_instance_at <= cutoff),
                  and_(Study.status == StudyStatus.COMPLETE, Study.reassessed_at <= cutoff))
    candidates = session.scalars(select(Study).where(due_now).order_by(Study.id)
                                 .with_for_update(skip_locked=True)).all()
    waiting_since = session.scalar(select(func.min(QueuedFile.enqueued_at)))
    given: list[Study] = []
    for study in candidates:
        if study.status == StudyStatus.OPEN and waiting_since is not None \
                and _aware(waiting_since) <= _aware(study.last_instance_at) + timedelta(seconds=stable_seconds):
            continue  # a file handed over while the study was still arriving has no result yet: it may be one of it
        if study.status == StudyStatus.COMPLETE and _still_to_reclassify(session, study.study_uid, model_version):
            continue  # a reclassification half-way through this study (a new model, batch by batch): wait for it
        result = assess(session, study.study_uid, model_version)
        new = changed(study, result, model_version, tolerance)
        study.status, study.reassessed_at, study.instance_count = StudyStatus.COMPLETE, None, result.instance_count
        if not new:
            continue
        study.completed_at, study.revision = now, study.revision + 1
        study.assessed_count, study.model_version = result.assessed_count, model_version
        study.probability, study.threshold, study.label = result.probability, result.threshold, result.label
        study.assessed_key = result.assessed_key
        session.add(StudyResult(study_id=study.id, revision=study.revision, completed_at=now,
                                instance_count=study.instance_count, assessed_count=study.assessed_count,
                                label=study.label, probability=study.probability, threshold=study.threshold,
                                model_version=model_version, assessed_key=result.assessed_key))
        if send and result.assessed_count:  # a study with nothing assessed (a CT, only laterals) sends PACS nothing
            study.send_state, study.send_attempts, study.next_send_at = SendState.PENDING, 0, now
            study.last_send_error = None
        given.append(study)
    session.flush()
    return given


def _still_to_reclassify(session: Session, study_uid: str, model_version: str) -> bool:
    """Whether an assessed instance of the study has no result from ``model_version`` yet."""
    current = select(Prediction.id).where(Prediction.image_id == Image.id, Prediction.model_version == model_version)
    return session.scalar(select(Image.id).where(Image.study_uid == study_uid, Image.status == Status.DONE,
                                                 ~current.exists()).limit(1)) is not None


def _aware(moment: datetime) -> datetime:
    """SQLite gives timestamps back without their zone; every one stored is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def reassess_relabelled(session: Session, model_version: str, new_label: Any, now: datetime | None = None) -> None:
    """Predictions of ``model_version`` are about to take ``new_label`` (an operating point applied or undone): the
    studies where one flips are reassessed, so a result whose label changes goes out again and no other does."""
    flipped = (select(Image.study_uid).join(Prediction, Prediction.image_id == Image.id)
               .where(Prediction.model_version == model_version, Prediction.label != new_label,
                      Image.study_uid.is_not(None)))
    session.execute(update(Study).where(Study.study_uid.in_(flipped)).values(reassessed_at=now or utcnow()))


def due(session: Session, limit: int = 20, now: datetime | None = None) -> list[Study]:
    """Completed studies whose result is waiting to be sent and due now, locked for this sender."""
    now = now or utcnow()
    return list(session.scalars(
        select(Study).where(Study.status == StudyStatus.COMPLETE,
                            Study.send_state.in_([SendState.PENDING, SendState.RETRYING]),
                            or_(Study.next_send_at.is_(None), Study.next_send_at <= now))
        .order_by(Study.next_send_at, Study.id).limit(limit).with_for_update(skip_locked=True)))


def record_outputs(session: Session, study: Study, report_uid: str, capture_uid: str | None) -> None:
    """The UIDs of the objects made for the study's current revision: pneumoscan's own, ignored if they come back."""
    session.execute(update(StudyResult).where(StudyResult.study_id == study.id, StudyResult.revision == study.revision)
                    .values(report_uid=report_uid, capture_uid=capture_uid))


def predecessor(session: Session, study: Study) -> str | None:
    """The report UID of the latest earlier revision that reached the PACS: the one a new report replaces."""
    return session.scalar(select(StudyResult.report_uid)
                          .where(StudyResult.study_id == study.id, StudyResult.revision < study.revision,
                                 StudyResult.sent_at.is_not(None), StudyResult.report_uid.is_not(None))
                          .order_by(StudyResult.revision.desc()).limit(1))


def own_outputs(session: Session, sop_instance_uids: Collection[str]) -> dict[str, str]:
    """Which of ``sop_instance_uids`` pneumoscan made itself (a report or heatmap it sent): UID -> why it is ignored."""
    wanted = sorted(set(sop_instance_uids))
    if not wanted:
        return {}
    rows = session.execute(select(StudyResult.report_uid, StudyResult.capture_uid, StudyResult.revision,
                                  Study.study_uid).join(Study, Study.id == StudyResult.study_id)
                           .where(or_(StudyResult.report_uid.in_(wanted), StudyResult.capture_uid.in_(wanted))))
    found: dict[str, str] = {}
    for report, capture, revision, study_uid in rows:
        for uid, what in ((report, "report"), (capture, "heatmap")):
            if uid in wanted:
                found[uid] = f"pneumoscan's own {what} of study {study_uid} (revision {revision})"
    return found


def mark_sent(session: Session, study: Study, now: datetime | None = None) -> None:
    now = now or utcnow()
    study.send_state, study.sent_at, study.last_send_error, study.next_send_at = SendState.SENT, now, None, None
    session.execute(update(StudyResult).where(StudyResult.study_id == study.id, StudyResult.revision == study.revision)
                    .values(sent_at=now))


def mark_failed(study: Study, error: str, *, max_attempts: int, first_retry: float = FIRST_RETRY,
                now: datetime | None = None) -> float | None:
    """Count a refused attempt: the delay in seconds before the next one (exponential backoff), or None when that
    was the last one allowed and the result is now ``failed`` with ``error`` as its reason."""
    study.send_attempts += 1
    study.last_send_error = error[:500]
    if study.send_attempts >= max_attempts:
        study.send_state, study.next_send_at = SendState.FAILED, None
        return None
    delay = min(LONGEST_RETRY, first_retry * 2 ** (study.send_attempts - 1))
    study.send_state, study.next_send_at = SendState.RETRYING, (now or utcnow()) + timedelta(seconds=delay)
    return delay


def mark_broken(study: Study, error: str) -> None:
    """Our own bug stopped the send: ``failed`` at once, never retried silently (a new result queues it again)."""
    study.send_attempts += 1
    study.send_state, study.next_send_at, study.last_send_error = SendState.FAILED, None, error[:500]


def send_states(session: Session) -> dict[str, int]:
    """How many studies' results are in each send state (for /metrics)."""
    rows = session.execute(select(Study.send_state, func.count()).where(Study.send_state.is_not(None))
                           .group_by(Study.send_state))
    return {str(state): int(count) for state, count in rows}


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
    domain: str | None = None  # the domain gate's verdict: in or out of the validated population


def instances(session: Session, study_uid: str, model_version: str) -> list[Instance]:
    """The instances of a study, with every path their content was seen at (the stored one first)."""
    rows = session.execute(
        select(Image.id, Image.sop_instance_uid, Image.path, Image.sha256, Image.status, Prediction.label,
               Prediction.probability, Image.domain)
        .outerjoin(Prediction, (Prediction.image_id == Image.id) & (Prediction.model_version == model_version))
        .where(Image.study_uid == study_uid, Image.status != Status.IGNORED).order_by(Image.id)).all()
    seen: dict[int, list[str]] = {}
    for image_id, path in session.execute(select(Sighting.image_id, Sighting.path)
                                          .where(Sighting.image_id.in_([r.id for r in rows]))):
        seen.setdefault(image_id, []).append(path)
    return [Instance(r.id, r.sop_instance_uid, list(dict.fromkeys([r.path, *seen.get(r.id, [])])), r.sha256,
                     r.status, r.label, r.probability, r.domain) for r in rows]


STUDY_FIELDS = ("study_uid", "status", "instance_count", "assessed_count", "label", "probability", "model_version",
                "completed_at", "revision", "send_state", "send_attempts", "next_send_at", "last_send_error",
                "sent_at")


def list_studies(session: Session, limit: int | None = 100) -> list[dict[str, Any]]:
    """Studies, last completed (or still open) first."""
    statement = select(Study).order_by(Study.last_instance_at.desc(), Study.id.desc())
    if limit:
        statement = statement.limit(limit)
    return [{name: getattr(study, name) for name in STUDY_FIELDS} for study in session.scalars(statement)]
