"""Database schema: images, predictions (one per image and model version), reviews, and the web app's users."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from pneumoscan.domain import AUDIT_ACTIONS, DOMAINS, LABELS, ROLES, STATUSES, STUDY_STATUSES


def _one_of(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    """A CHECK constraint keeping ``column`` to the domain vocabulary ``values``."""
    return CheckConstraint(f"{column} IN ({', '.join(repr(v) for v in values)})", name=name)


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the database layer uses."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Image(Base):
    """One distinct file content (by SHA-256), wherever it was seen last."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # NULL only for files that could not be read at all (status failed); they are keyed by path.
    sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(String(16))
    byte_size: Mapped[int | None] = mapped_column(BigInteger)
    study_uid: Mapped[str | None] = mapped_column(String(64))
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    patient_ref: Mapped[str | None] = mapped_column(String(64))
    accession: Mapped[str | None] = mapped_column(String(64))  # see domain.DicomMeta.accession
    age_band: Mapped[str | None] = mapped_column(String(16))  # see domain.DicomMeta.age_band: never the age
    # The domain gate's verdict at the latest classification (models.domain): in or out, and the image's score.
    domain: Mapped[str | None] = mapped_column(String(3))
    domain_score: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    predictions: Mapped[list[Prediction]] = relationship(back_populates="image")

    __table_args__ = (
        _one_of("status", STATUSES, "ck_images_status"),
        _one_of("domain", DOMAINS, "ck_images_domain"),
        Index("ix_images_status_updated_at", "status", "updated_at", "id"),
        Index("ix_images_path", "path"),
        Index("ix_images_updated_at", "updated_at"),
        Index("ix_images_study_uid", "study_uid"),
        Index("ix_images_patient_ref", "patient_ref"),
    )


class Prediction(Base):
    """The output of one model version on one image."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="predictions")

    __table_args__ = (
        _one_of("label", LABELS, "ck_predictions_label"),
        UniqueConstraint("image_id", "model_version", name="uq_predictions_image_model"),
        Index("ix_predictions_model_created", "model_version", "created_at"),
        Index("ix_predictions_model_label_probability", "model_version", "label", "probability"),
        Index("ix_predictions_model_probability", "model_version", "probability"),
    )


class Review(Base):
    """A person's reading of an image, kept beside the model's."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Saved before the reader could see the model's call (PNEUMOSCAN_BLINDED_READING): a reader-alone reading.
    blinded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (_one_of("label", LABELS, "ck_reviews_label"),
                      Index("ix_reviews_image_id_id", "image_id", "id"))


class OperatingPoint(Base):
    """A site's decision threshold for one model version, fitted on its own reviewed cases.

    The newest row of a model version that is not undone is in force; with none, the model card's
    threshold is. Rows are never deleted, so every change of labels can be traced to the reviews
    behind it.
    """

    __tablename__ = "operating_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    previous_threshold: Mapped[float] = mapped_column(Float)
    target_sensitivity: Mapped[float] = mapped_column(Float)
    review_ids: Mapped[str] = mapped_column(Text)  # JSON list of the reviews it was fitted on
    figures: Mapped[str] = mapped_column(Text)  # JSON: metrics on those reviews at the new threshold
    relabelled: Mapped[int] = mapped_column(Integer)  # predictions whose label changed when applied
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_operating_points_model", "model_version", "id"),)


class QueuedFile(Base):
    """The outbox: a file handed to the broker and not yet settled by a worker.

    Written before the message is published and deleted in the transaction that stores the file's
    result, so a message the broker lost, or a batch a dead worker held, is found here and enqueued
    again (`db.outbox.stale`). Keyed by path: the watcher hands over paths, not contents.
    """

    __tablename__ = "queued_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (Index("ix_queued_files_enqueued_at", "enqueued_at"),)


class Sighting(Base):
    """A path at which a content was seen: one image can have many (byte-identical copies)."""

    __tablename__ = "sightings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    byte_size: Mapped[int | None] = mapped_column(BigInteger)
    mtime: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("image_id", "path", name="uq_sightings_image_path"),
        Index("ix_sightings_path", "path"),
    )


class User(Base):
    """A person who signs in to the web app: a reviewer, or an admin who also manages users.

    Only an argon2 hash of the password is kept. ``failed_logins`` counts failures since the last
    success; reaching the limit sets ``locked_until``. Users are disabled, never deleted, so that
    every review keeps the name of who wrote it.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Bumped by a password change or a disable: signs out every session made before it.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (_one_of("role", ROLES, "ck_users_role"),)


class ApiToken(Base):
    """A bearer token for the REST API, kept only as its SHA-256 (the token itself is shown once)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Study(Base):
    """A DICOM study: its instances, and once none has arrived for the stable time, its result.

    ``status`` is open while instances may still come (a late one reopens it) and complete once
    settled. The result goes back to PACS when a destination is set: ``send_state`` pending, sent or
    retrying, with the attempts and the time of the next one kept here, so that nothing waiting to be
    sent is lost on a restart. ``revision`` counts completions; each one is also kept in study_results.
    """

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    last_instance_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    assessed_count: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str | None] = mapped_column(String(16))
    probability: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    send_state: Mapped[str | None] = mapped_column(String(16))
    send_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_send_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_send_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when an instance already counted got a new result (a reclassification): the study is assessed
    # again without reopening it, and its result goes out again only if what it says changed.
    reassessed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    assessed_key: Mapped[str | None] = mapped_column(String(64))  # SHA-256 of the assessed SOP Instance UIDs

    __table_args__ = (
        _one_of("status", STUDY_STATUSES, "ck_studies_status"),
        Index("ix_studies_status_last_instance", "status", "last_instance_at"),
        Index("ix_studies_send", "send_state", "next_send_at"),
    )


class StudyResult(Base):
    """Every result a study was given, oldest first: a late instance reopens a study and adds a row here."""

    __tablename__ = "study_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    completed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    instance_count: Mapped[int] = mapped_column(Integer)
    assessed_count: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(16))
    probability: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    threshold: Mapped[float | None] = mapped_column(Float)
    assessed_key: Mapped[str | None] = mapped_column(String(64))
    # The UIDs of the report and heatmap made for this revision: pneumoscan's own outputs, ignored if they come back.
    report_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    capture_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """One line of the audit trail: who did what, when, from which address. Append-only (triggers refuse updates)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str | None] = mapped_column(String(128), index=True)  # a user name, or the name tried
    action: Mapped[str] = mapped_column(String(32))
    image_id: Mapped[int | None] = mapped_column(Integer, index=True)  # no foreign key: the trail outlives rows
    detail: Mapped[str | None] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(String(64))  # the client's address; "cli" from the command line

    __table_args__ = (_one_of("action", AUDIT_ACTIONS, "ck_audit_events_action"),)


# The worklist by study (db.images.study_worklist): urgent studies by probability, the rest newest first.
Index("ix_studies_probability", Study.probability)
Index("ix_studies_last_instance_at", Study.last_instance_at, Study.id)
