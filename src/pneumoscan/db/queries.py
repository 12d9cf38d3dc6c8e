"""Query and write functions: idempotent batch saves and the filtered results query."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    bindparam,
    cast,
    column,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pneumoscan.db.schema import Image, Prediction, Review, Sighting, Study, utcnow
from pneumoscan.domain import DICOM_COLUMNS, REVIEW_STATES, Label, Result, ReviewState, Sort, Status


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
                        Image.status != "failed"))
    rejected = select(Image.sha256).where(Image.sha256.in_(wanted), Image.status == "rejected")
    return {h for (h,) in session.execute(predicted.union(rejected)) if h is not None}


# Rows per multi-row statement: far below SQLite's limit of 32,766 bound values with ~20 columns a row.
_ROWS_PER_STATEMENT = 500


def save_results(session: Session, results: Sequence[Result]) -> None:
    """Write a batch of results in the caller's transaction; safe to repeat and to run concurrently.

    A handful of statements per batch, whatever its size: images are upserted by SHA-256 in one
    multi-row statement (concurrent writers of the same content meet on the unique key), predictions
    are inserted once per (image, model version) in another, and skipped results update their
    image's path in one executemany. When one content appears more than once, the last path wins.
    """
    now = utcnow()
    written: dict[str, Result] = {}  # sha256 -> the last result with that content that is written out
    moved: dict[str, Result] = {}  # sha256 -> the last skipped result with that content
    for result in results:
        if result.status == "skipped":
            if result.sha256:
                moved[result.sha256] = result
        elif result.sha256 is None:  # unreadable: its image if known, else a row keyed by path
            _save_unhashed(session, _image_values(result, now), now, result.image_id)
        else:
            written[result.sha256] = result
            moved.pop(result.sha256, None)
    if session.get_bind().dialect.name == "postgresql" and (written or moved):
        _lock_contents(session, {*written, *moved})
    ids = _upsert_images(session, [written[sha] for sha in sorted(written)], now)
    predictions: dict[tuple[str, str | None], dict[str, Any]] = {}  # the first per (content, model version)
    for r in sorted(results, key=lambda r: r.sha256 or ""):  # stable: the first per key stays first
        if r.status == "done" and r.sha256:
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
    _touch_studies(session, {r.dicom.study_uid for r in written.values() if r.dicom and r.dicom.study_uid}, now)


def _touch_studies(session: Session, study_uids: set[str], now: datetime) -> None:
    """An instance of each study was stored just now: open the study (again), to be settled once it is quiet."""
    rows = [{"study_uid": uid, "status": "open", "last_instance_at": now, "revision": 0, "instance_count": 0,
             "assessed_count": 0, "send_attempts": 0} for uid in sorted(study_uids)]
    for chunk in _chunks(rows):
        statement = dialect_insert(session, Study).values(chunk)
        session.execute(statement.on_conflict_do_update(
            index_elements=["study_uid"], set_={"status": "open", "last_instance_at": now}))


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
            "reason": result.reason, "updated_at": now, **dicom}


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
        status="rejected", updated_at=now,
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


@dataclass(frozen=True)
class ResultFilter:
    """Filters of the results query; None means no filter on that field.

    The enum fields also take their values as text (a label in any case), as the CLI and the web app pass them.
    """

    status: Status | None = None
    label: Label | None = None
    min_probability: float | None = None
    max_probability: float | None = None
    since: datetime | None = None
    model_version: str | None = None
    limit: int | None = 100
    sort: Sort = Sort.NEWEST
    path: str | None = None  # a glob (* and ?) matched against every path the content was seen at
    review: ReviewState | None = None
    offset: int = 0  # rows to skip, for paging
    study_uid: str | None = None  # only the instances of this DICOM study

    def __post_init__(self) -> None:
        # Frozen: the enum members replace their text through object.__setattr__, as dataclasses do themselves.
        if self.status is not None:
            object.__setattr__(self, "status", Status(self.status))
        if self.label is not None:
            object.__setattr__(self, "label", Label(self.label.upper()))
        object.__setattr__(self, "sort", Sort(self.sort))
        if self.review is not None:
            object.__setattr__(self, "review", ReviewState(self.review))


RESULT_FIELDS = ("id", "path", "paths", "sha256", "kind", "status", "reason", "label", "probability", "threshold",
                 "model_version", "classified_at", "review_label", "reviewed_by", "study_uid", "series_uid",
                 "sop_instance_uid", "modality", "view_position", "updated_at")


def _latest_review(column: Any) -> Any:
    """A scalar subquery: ``column`` of the image's latest review (None when it has none)."""
    return (select(column).where(Review.image_id == Image.id).order_by(Review.id.desc()).limit(1)
            .correlate(Image).scalar_subquery())


def glob_to_like(pattern: str) -> str:
    """A shell-style glob (``*``, ``?``) as a LIKE pattern with ``\\`` as the escape character."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


# A limited query with filters on the prediction first counts the predictions they match, up to this
# many. Fewer: their images are fetched by id and sorted (cheap, whatever the planner thinks of the
# range). As many: the matches are common enough that walking the images newest first reaches the
# limit soon (after about limit x images / SPARSE_MATCHES rows, 20,000 at 1,000,000 images).
# Neither planner can tell the two apart by itself: SQLite (no STAT4) guesses every range at a fixed
# fraction, and PostgreSQL's histogram cannot resolve `probability >= 0.999`. PostgreSQL does pick
# the walk for common matches by itself; SQLite is told to (`walk`).
SPARSE_MATCHES = 5_000


def _prediction_conditions(filters: ResultFilter, indexable: bool = True) -> list[ColumnElement[bool]]:
    # `x || ''` and `x + 0` compare the same values but hide the column from every index, so that
    # SQLite cannot start from predictions and sort all matches when walking images is the better plan.
    label = Prediction.label if indexable else Prediction.label.concat("")
    probability = Prediction.probability if indexable else Prediction.probability + 0
    conditions = []
    if filters.label is not None:
        conditions.append(label == filters.label)
    if filters.min_probability is not None:
        conditions.append(probability >= filters.min_probability)
    if filters.max_probability is not None:
        conditions.append(probability <= filters.max_probability)
    return conditions


def results_statement(filters: ResultFilter, image_ids: Collection[int] | None = None,
                      walk: bool = False) -> Select:
    """The SELECT behind ``pneumoscan results``: images with their prediction from one model version.

    With no model version given, each image is shown with every prediction it has (and images
    without any once). ``image_ids`` keeps only these images (a superset of the matches that
    `plan_results` found to be few); ``walk`` keeps the prediction's columns (model version
    included) off its indexes, so that SQLite reads the images newest first until the limit is
    reached. Neither changes the rows. (PostgreSQL would misjudge the hidden terms as rare.)
    A review filter keeps only images with a prediction: a review is a reading of a model's call.
    """
    on = Prediction.image_id == Image.id
    if filters.model_version is not None:
        version = Prediction.model_version.concat("") if walk else Prediction.model_version
        on = and_(on, version == filters.model_version)
    paths = (select(func.count()).select_from(Sighting).where(Sighting.image_id == Image.id)
             .correlate(Image).scalar_subquery())
    statement = select(
        Image.id, Image.path, paths.label("paths"), Image.sha256, Image.kind, Image.status, Image.reason,
        Prediction.label, Prediction.probability, Prediction.threshold, Prediction.model_version,
        Prediction.created_at.label("classified_at"), _latest_review(Review.label).label("review_label"),
        _latest_review(Review.reviewer).label("reviewed_by"), Image.study_uid, Image.series_uid,
        Image.sop_instance_uid, Image.modality, Image.view_position, Image.updated_at,
    ).join(Prediction, on, isouter=filters.review is None)
    conditions = _prediction_conditions(filters, indexable=not walk)
    if filters.review is not None:
        conditions.append(_review_condition(filters.review, filters.model_version))
    if filters.status is not None:
        conditions.append(Image.status == filters.status)
    if filters.since is not None:
        conditions.append(Image.updated_at >= filters.since)
    if filters.study_uid is not None:
        conditions.append(Image.study_uid == filters.study_uid)
    if image_ids is not None:
        conditions.append(Image.id.in_(sorted(image_ids)))
    if filters.path is not None:
        like = glob_to_like(filters.path)
        seen_at = select(Sighting.image_id).where(Sighting.path.like(like, escape="\\"))
        conditions.append(or_(Image.id.in_(seen_at), Image.path.like(like, escape="\\")))
    # With a review filter every row has a prediction, and plain DESC is the order an index on probability
    # gives read backwards (PostgreSQL cannot use it for DESC NULLS LAST); otherwise images without a
    # prediction go last.
    probability = Prediction.probability.desc() if filters.review is not None else \
        Prediction.probability.desc().nulls_last()
    order = ((probability, Image.id.desc()) if filters.sort == Sort.PROBABILITY
             else (Image.updated_at.desc(), Image.id.desc()))
    statement = statement.where(*conditions).order_by(*order)
    if filters.offset:
        statement = statement.offset(filters.offset)
    return statement.limit(filters.limit) if filters.limit else statement


def _review_condition(state: ReviewState, model_version: str | None) -> ColumnElement[bool]:
    """The review state as a condition; the IN lists start from the (small) reviews table, so that a count
    of reviewed images or disagreements reads the reviews, not every prediction."""
    reviewed = select(Review.image_id)
    if state == ReviewState.UNREVIEWED:
        return ~exists().where(Review.image_id == Image.id)
    if state == ReviewState.REVIEWED:
        return Image.id.in_(reviewed)
    if state == ReviewState.DISAGREEMENT:
        newest = select(func.max(Review.id)).group_by(Review.image_id)
        on = Prediction.image_id == Review.image_id
        if model_version is not None:
            on = and_(on, Prediction.model_version == model_version)
        disputed = (select(Review.image_id).join(Prediction, on)
                    .where(Review.id.in_(newest), Review.label != Prediction.label))
        if model_version is not None:  # the list is exact for this version's predictions
            return Image.id.in_(disputed)
        return and_(Image.id.in_(disputed), _latest_review(Review.label) != Prediction.label)
    raise ValueError(f"review state must be one of {', '.join(REVIEW_STATES)}, not {state!r}")


COUNT_AT_MOST = 10_000  # counting stops here: a total beyond it is shown as "at least" (cheap at any size)


def count_results(session: Session, filters: ResultFilter, at_most: int = COUNT_AT_MOST) -> int:
    """How many rows the results query gives for ``filters`` without its limit, up to ``at_most``.

    Counts the matching image ids only (none of the listing's per-row subqueries) and stops at
    ``at_most``, so a page's total costs a few milliseconds even at millions of rows.
    """
    bounded = replace(filters, limit=at_most, offset=0)
    ids = plan_results(session, bounded).with_only_columns(Image.id, maintain_column_froms=True).order_by(None)
    return int(session.execute(select(func.count()).select_from(ids.subquery())).scalar_one())


def model_versions(session: Session) -> list[str]:
    """Every model version that has predictions stored, in order of its first prediction.

    One index seek per version (a skip scan over ix_predictions_model_created), so the list costs
    the same at a million predictions as at ten.
    """
    versions: list[tuple[datetime, str]] = []
    last: str | None = None
    while True:
        following = select(func.min(Prediction.model_version))
        if last is not None:
            following = following.where(Prediction.model_version > last)
        version = session.execute(following).scalar_one_or_none()
        if version is None:
            return [v for _, v in sorted(versions)]
        first = session.execute(select(func.min(Prediction.created_at))
                                .where(Prediction.model_version == version)).scalar_one()
        versions.append((first, str(version)))
        last = str(version)


def plan_results(session: Session, filters: ResultFilter, sparse_matches: int = SPARSE_MATCHES) -> Select:
    """The results statement to run for ``filters``, chosen by how many predictions they match.

    Only a limited query with a filter on label or probability needs the choice (see
    SPARSE_MATCHES); it costs one index range count of at most ``sparse_matches`` entries.
    """
    if filters.path is not None:
        # The path indexes find the matching contents; few of them: fetch those images by id.
        like = glob_to_like(filters.path)
        seen = (select(Sighting.image_id).where(Sighting.path.like(like, escape="\\"))
                .union(select(Image.id).where(Image.path.like(like, escape="\\"))).limit(sparse_matches))
        ids = set(session.execute(seen).scalars())
        if len(ids) < sparse_matches:
            return results_statement(filters, image_ids=ids)
    predicted = _prediction_conditions(filters)
    if not filters.limit or not predicted or filters.sort == Sort.PROBABILITY:
        # Most suspicious first reads the probability indexes in order, whatever the filters.
        return results_statement(filters)
    if filters.model_version is not None:
        predicted.append(Prediction.model_version == filters.model_version)
    # Counting ids reads the index alone (every index holds the row id); image_id would cost a
    # table read per match.
    probe = select(Prediction.id).where(*predicted).limit(sparse_matches).subquery()
    if session.execute(select(func.count()).select_from(probe)).scalar_one() >= sparse_matches:
        return results_statement(filters, walk=session.get_bind().dialect.name == "sqlite")
    matches = select(Prediction.image_id).where(*predicted)
    return results_statement(filters, image_ids=set(session.execute(matches).scalars()))


@contextmanager
def serial_execution(session: Session, filters: ResultFilter) -> Iterator[None]:
    """PostgreSQL: run the limited results query in ``session`` without parallel workers.

    A limited query stops after a few hundred rows; starting parallel workers for it costs more than
    they save (80 ms instead of 25 at 1,000,000 images on 2 busy cores). The caller's transaction
    gets its own setting back afterwards (after an error, the rollback discards the change).
    """
    if not filters.limit or session.get_bind().dialect.name != "postgresql":
        yield
        return
    setting = "max_parallel_workers_per_gather"
    previous = session.execute(select(func.current_setting(setting))).scalar_one()
    session.execute(select(func.set_config(setting, "0", True)))
    yield
    session.execute(select(func.set_config(setting, previous, True)))


def query_results(session: Session, filters: ResultFilter) -> list[dict[str, Any]]:
    """Rows of the results query as dicts keyed by RESULT_FIELDS."""
    statement = plan_results(session, filters)
    with serial_execution(session, filters):
        return [dict(row._mapping) for row in session.execute(statement)]


def results_page(session: Session, filters: ResultFilter) -> tuple[list[dict[str, Any]], int]:
    """One page of the results query and its total (counted up to COUNT_AT_MOST), for the web app.

    A disagreement filter matches few images (a share of the reviewed ones), and finding them is most
    of the cost; they are found once, counted, and the page is read among them by id. (For every
    reviewed image the id list is too long to be the cheaper way.)
    """
    if filters.review == ReviewState.DISAGREEMENT and filters.limit:
        bounded = replace(filters, limit=COUNT_AT_MOST, offset=0)
        ids = set(session.scalars(bounded_ids(bounded)))
        if len(ids) < COUNT_AT_MOST:
            page = results_statement(replace(filters, review=None), image_ids=ids)  # the ids satisfy it
            with serial_execution(session, filters):
                return [dict(row._mapping) for row in session.execute(page)], len(ids)
    rows = query_results(session, filters)
    full = bool(filters.limit) and len(rows) == filters.limit
    return rows, count_results(session, filters) if full or filters.offset else len(rows)


def bounded_ids(filters: ResultFilter) -> Select:
    """The ids of the images the results query gives for ``filters`` (its limit applies), in no order."""
    return results_statement(filters).with_only_columns(Image.id, maintain_column_froms=True).order_by(None)


@dataclass(frozen=True)
class ReclassifySelection:
    """Which images a reclassification run sends back through the pipeline.

    By default: every image without a prediction from the current model version, and every failed
    one, but no rejected image (its bytes are not a usable image). ``everything`` drops that rule,
    ``status`` keeps only images with this status (rejected included when asked for), and ``since``
    keeps only images updated at or after this time.
    """

    everything: bool = False
    since: datetime | None = None
    status: str | None = None


def reclassify_statement(selection: ReclassifySelection, model_version: str) -> Select:
    """SELECT image id and stored path of the images ``selection`` picks, in id order."""
    statement = select(Image.id, Image.path)
    if not selection.everything:
        current = exists().where(Prediction.image_id == Image.id, Prediction.model_version == model_version)
        statement = statement.where(or_(~current, Image.status == "failed"))
        if selection.status is None:
            statement = statement.where(Image.status != "rejected")
    if selection.status is not None:
        statement = statement.where(Image.status == selection.status)
    if selection.since is not None:
        statement = statement.where(Image.updated_at >= selection.since)
    return statement.order_by(Image.id)


def count_for_reclassification(session: Session, selection: ReclassifySelection, model_version: str) -> int:
    """How many images ``selection`` picks now."""
    inner = reclassify_statement(selection, model_version).order_by(None).subquery()
    return int(session.execute(select(func.count()).select_from(inner)).scalar_one())


def iter_reclassification(session: Session, selection: ReclassifySelection, model_version: str,
                          batch_size: int) -> Iterator[list[tuple[int, str]]]:
    """The picked images as batches of (id, path), in id order, read one batch at a time.

    Keyset pagination on the id keeps each query short and lets the caller commit work between
    batches; images reclassified meanwhile drop out of later pages by themselves.
    """
    last = 0
    while True:
        page = reclassify_statement(selection, model_version).where(Image.id > last).limit(batch_size)
        rows = [(int(image_id), str(path)) for image_id, path in session.execute(page)]
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def image_locations(session: Session, image_ids: Sequence[int]) -> list[tuple[int, str]]:
    """(id, stored path) of ``image_ids`` in the order given; ids that no longer exist are left out."""
    rows = session.execute(select(Image.id, Image.path).where(Image.id.in_(list(image_ids))))
    found = {int(image_id): str(path) for image_id, path in rows}
    return [(i, found[i]) for i in image_ids if i in found]


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
