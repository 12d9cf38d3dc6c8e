"""The write path: idempotent batch saves of results (images, predictions, sightings, studies)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, bindparam, cast, column, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pneumoscan.db.replaced import drop_replaced_rejects
from pneumoscan.db.schema import Image, Prediction, QueuedFile, Sighting, Study, utcnow
from pneumoscan.db.studies import own_outputs
from pneumoscan.domain import DICOM_COLUMNS, Outcome, Result, Status, StudyStatus, display_path


def dialect_insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"pneumoscan supports SQLite and PostgreSQL, not {dialect}")


def settled_hashes(session: Session, hashes: Iterable[str], model_version: str) -> set[str]:
    """Hashes needing no work: predicted by ``model_version`` already, or rejected (same bytes, same fate).

    A failed image is never settled: once its file can be read again it goes through the pipeline,
    which sets its status back.
    """
    wanted = sorted(set(hashes))
    if not wanted:
        return set()
    predicted = (select(Image.sha256).join(Prediction)
                 .where(Image.sha256.in_(wanted), Prediction.model_version == model_version,
                        Image.status != Status.FAILED))
    rejected = select(Image.sha256).where(Image.sha256.in_(wanted), Image.status.in_([Status.REJECTED, Status.IGNORED]))
    return {h for (h,) in session.execute(predicted.union(rejected)) if h is not None}


# Rows per multi-row statement: far below SQLite's limit of 32,766 bound values with ~20 columns a row.
_ROWS_PER_STATEMENT = 500


def save_results(session: Session, results: Sequence[Result]) -> list[Result]:
    """Write a batch of results in the caller's transaction; safe to repeat and to run concurrently. Returns the
    results as stored: pneumoscan's own outputs that came back are ``ignored``, whatever their decoding said.

    A handful of statements per batch, whatever its size: images are upserted by SHA-256 in one
    multi-row statement (concurrent writers of the same content meet on the unique key), predictions
    are inserted once per (image, model version) in another, and skipped results update their
    image's path in one executemany. When one content appears more than once, the last path wins.
    """
    now = utcnow()
    written: dict[str, Result] = {}  # sha256 -> the last result with that content that is written out
    moved: dict[str, Result] = {}  # sha256 -> the last skipped result with that content
    for result in results:
        if result.status == Outcome.SKIPPED:
            if result.sha256:
                moved[result.sha256] = result
        elif result.sha256 is None:  # unreadable: its image if known, else a row keyed by path
            _save_unhashed(session, _image_values(result, now), now, result.image_id)
        else:
            written[result.sha256] = result
            moved.pop(result.sha256, None)
    own = _ignore_own_outputs(session, written)
    if own:
        results = [own.get(r.sha256 or "", r) if r.status != Outcome.SKIPPED else r for r in results]
    if session.get_bind().dialect.name == "postgresql" and (written or moved):
        _lock_contents(session, {*written, *moved})
    ids = _upsert_images(session, [written[sha] for sha in sorted(written)], now)
    predictions: dict[tuple[str, str | None], dict[str, Any]] = {}  # the first per (content, model version)
    for r in sorted(results, key=lambda r: r.sha256 or ""):  # stable: the first per key stays first
        if r.status == Outcome.DONE and r.sha256:
            predictions.setdefault((r.sha256, r.model_version), {
                "image_id": ids[r.sha256], "model_version": r.model_version, "probability": r.probability,
                "label": r.label, "threshold": r.threshold, "created_at": now})
    for chunk in _chunks(list(predictions.values())):
        session.execute(dialect_insert(session, Prediction).values(chunk)
                        .on_conflict_do_nothing(index_elements=["image_id", "model_version"]))
    if moved:
        session.connection().execute(
            update(Image).where(Image.sha256 == bindparam("b_sha256"))
            .values(path=bindparam("b_path"), updated_at=now),
            [{"b_sha256": sha, "b_path": moved[sha].path} for sha in sorted(moved)])
        stored = select(Image.sha256, Image.id).where(Image.sha256.in_(sorted(moved)))
        ids.update((sha, image_id) for sha, image_id in session.execute(stored) if sha)
    for result in (*written.values(), *moved.values()):
        _supersede(session, result, ids.get(result.sha256 or ""), now)
    _record_sightings(session, [r for r in results if r.sha256 in ids], ids, now)
    drop_replaced_rejects(session, [(r.path, ids[sha]) for sha, r in written.items() if sha in ids])
    _touch_studies(session, list(written.values()), now)
    return list(results)


def _ignore_own_outputs(session: Session, written: dict[str, Result]) -> dict[str, Result]:
    """A report or heatmap pneumoscan sent (a PACS routing it back) is stored once as ignored, whatever it holds;
    the results changed so, by SHA-256."""
    uids = {r.dicom.sop_instance_uid: sha for sha, r in written.items() if r.dicom and r.dicom.sop_instance_uid}
    for uid, reason in own_outputs(session, uids).items():
        written[uids[uid]] = replace(written[uids[uid]], status=Outcome.IGNORED, reason=reason, probability=None,
                                     label=None, threshold=None, model_version=None)
    return {sha: written[sha] for uid, sha in uids.items() if written[sha].status == Outcome.IGNORED}


def handed_over(session: Session, paths: list[str]) -> dict[str, datetime]:
    """When each of ``paths`` still in the outbox was handed to the workers: when its file arrived, near enough."""
    if not paths:
        return {}
    rows = session.execute(select(QueuedFile.path, QueuedFile.enqueued_at)
                           .where(QueuedFile.path.in_(sorted({display_path(p) for p in paths}))))
    return {path: at for path, at in rows}


def _aware(moment: datetime) -> datetime:
    """SQLite gives timestamps back without their zone; every one stored is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _touch_studies(session: Session, results: list[Result], now: datetime) -> None:
    """Instances of studies were stored just now. One that arrived (stored for the first time) opens its study
    (again), its quiet time counted from when its file was handed to the workers (the outbox's record) or else now;
    a known instance with a new result (a reclassification) marks its study reassessed without reopening it. An
    ignored object (not an image, or pneumoscan's own output) does neither."""
    counted = [(r, r.dicom.study_uid) for r in results
               if r.status != Outcome.IGNORED and r.dicom is not None and r.dicom.study_uid]
    handed = handed_over(session, [r.path for r, _ in counted if r.image_id is None])
    arrived: dict[str, datetime] = {}
    for result, uid in counted:
        if result.image_id is None:
            at = min(_aware(handed.get(display_path(result.path), now)), now)
            arrived[uid] = max(arrived.get(uid, at), at)
    later = func.greatest if session.get_bind().dialect.name == "postgresql" else func.max
    rows = [{"study_uid": uid, "status": StudyStatus.OPEN, "last_instance_at": at, "revision": 0, "instance_count": 0,
             "assessed_count": 0, "send_attempts": 0} for uid, at in sorted(arrived.items())]
    for chunk in _chunks(rows):
        statement = dialect_insert(session, Study).values(chunk)
        session.execute(statement.on_conflict_do_update(
            index_elements=["study_uid"], set_={"status": StudyStatus.OPEN, "last_instance_at": later(
                Study.__table__.c.last_instance_at, statement.excluded.last_instance_at)}))
    reassessed = [{"study_uid": uid, "status": StudyStatus.OPEN, "last_instance_at": now, "revision": 0,
                   "instance_count": 0, "assessed_count": 0, "send_attempts": 0, "reassessed_at": now}
                  for uid in sorted({uid for r, uid in counted if r.image_id is not None} - set(arrived))]
    for chunk in _chunks(reassessed):
        statement = dialect_insert(session, Study).values(chunk)
        session.execute(statement.on_conflict_do_update(index_elements=["study_uid"], set_={"reassessed_at": now}))


def _record_sightings(session: Session, results: list[Result], ids: dict[str, int], now: datetime) -> None:
    """Every (content, path) of the batch, the duplicates and the skipped copies included."""
    rows = {(ids[r.sha256], r.path): {"image_id": ids[r.sha256], "path": r.path, "first_seen_at": now,
                                      "last_seen_at": now, "byte_size": r.byte_size, "mtime": r.mtime}
            for r in results if r.sha256}
    for chunk in _chunks([rows[key] for key in sorted(rows)]):
        statement = dialect_insert(session, Sighting).values(chunk)
        session.execute(statement.on_conflict_do_update(
            index_elements=["image_id", "path"],
            set_={"last_seen_at": statement.excluded.last_seen_at, "byte_size": statement.excluded.byte_size,
                  "mtime": statement.excluded.mtime}))


def _lock_contents(session: Session, hashes: Collection[str]) -> None:
    """Take a transaction-scoped PostgreSQL advisory lock per content, in one global order.

    Two concurrent batches that share contents would otherwise lock rows in different orders (an
    existing row before a new one that the other batch is inserting) and deadlock. Every writer
    locks the contents it touches up front, in key order, so one simply waits for the other.
    SQLite needs none of this: it serializes writers.
    """
    keys = sorted({int(sha[:16], 16) - (1 << 63) for sha in hashes})  # 64-bit keys from the SHA-256
    session.execute(select(func.pg_advisory_xact_lock(column("key")))
                    .select_from(func.unnest(cast(keys, postgresql.ARRAY(BigInteger))).alias("key")))


def _image_values(result: Result, now: datetime) -> dict[str, Any]:
    dicom = asdict(result.dicom) if result.dicom else dict.fromkeys(DICOM_COLUMNS)
    return {"path": result.path, "kind": result.kind, "byte_size": result.byte_size, "status": result.status,
            "reason": result.reason, "domain": result.domain, "domain_score": result.domain_score, "updated_at": now,
            **dicom}


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        yield rows[start:start + _ROWS_PER_STATEMENT]


def _upsert_images(session: Session, results: list[Result], now: datetime) -> dict[str, int]:
    """Insert or update the images of ``results`` (distinct SHA-256s); their ids by SHA-256."""
    ids: dict[str, int] = {}
    if not results:
        return ids
    # A readable file replaces the path-keyed placeholder from when it could not be read.
    session.execute(delete(Image).where(Image.sha256.is_(None), Image.path.in_({r.path for r in results})))
    rows = [{**_image_values(r, now), "sha256": r.sha256, "first_seen_at": now} for r in results]
    for chunk in _chunks(rows):
        statement = dialect_insert(session, Image).values(chunk)
        updated = {name: statement.excluded[name] for name in chunk[0] if name not in ("sha256", "first_seen_at")}
        statement = statement.on_conflict_do_update(index_elements=["sha256"], set_=updated)
        ids.update((sha, image_id) for sha, image_id in session.execute(statement.returning(Image.sha256, Image.id)))
    return ids


def _supersede(session: Session, result: Result, image_id: int | None, now: datetime) -> None:
    """Reclassifying an image whose file now holds other content: settle the old image.

    The new content is its own image; the old one, with no prediction from this model version and no
    file left to read, is marked rejected so that the nightly job stops picking it up. Its older
    predictions stay.
    """
    if result.image_id is None or image_id is None or result.image_id == image_id or not result.model_version:
        return
    current = select(Prediction.id).where(Prediction.image_id == result.image_id,
                                          Prediction.model_version == result.model_version)
    session.execute(update(Image).where(Image.id == result.image_id, ~current.exists()).values(
        status=Status.REJECTED, updated_at=now,
        reason="file replaced by other content before it could be reclassified (stored as its own image)"))


def _save_unhashed(session: Session, values: dict[str, Any], now: datetime, image_id: int | None) -> None:
    if image_id is not None:
        # A stored image whose file cannot be read now: it keeps its content, metadata and path.
        outcome = {"status": values["status"], "reason": values["reason"], "updated_at": now}
        statement = update(Image).where(Image.id == image_id).values(**outcome).returning(Image.id)
        if session.execute(statement).first() is not None:
            return
    existing = session.execute(
        select(Image.id).where(Image.sha256.is_(None), Image.path == values["path"])
    ).scalar_one_or_none()
    if existing is None:
        session.add(Image(first_seen_at=now, **values))
    else:
        session.execute(update(Image).where(Image.id == existing).values(**values))
