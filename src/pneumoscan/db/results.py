"""The results query: its filters, the planner that picks a statement for them, paging and counts."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, Select, Subquery, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from pneumoscan.db.schema import Image, Prediction, Review, Sighting
from pneumoscan.domain import REVIEW_STATES, Domain, Label, ReviewState, Sort, Status


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
    domain: Domain | None = None  # only images in (or out of) the validated population, at their latest verdict

    def __post_init__(self) -> None:
        # Frozen: the enum members replace their text through object.__setattr__, as dataclasses do themselves.
        if self.status is not None:
            object.__setattr__(self, "status", Status(self.status))
        if self.label is not None:
            object.__setattr__(self, "label", Label(self.label.upper()))
        object.__setattr__(self, "sort", Sort(self.sort))
        if self.review is not None:
            object.__setattr__(self, "review", ReviewState(self.review))
        if self.domain is not None:
            object.__setattr__(self, "domain", Domain(self.domain))


RESULT_FIELDS = ("id", "path", "paths", "sha256", "kind", "status", "reason", "label", "probability", "threshold",
                 "model_version", "classified_at", "review_label", "reviewed_by", "study_uid", "series_uid",
                 "sop_instance_uid", "modality", "view_position", "domain", "domain_score", "updated_at")


# The latest review of an image is its review with the highest id: reviews are append-only, and a correction
# is a later row. Both forms below say so; everything else (the filters, reviews.py's cases and agreement)
# uses them rather than restating it.

def latest_reviews() -> Subquery:
    """Each reviewed image's latest review, as rows of (image_id, review_id): for reading many images at once."""
    return (select(Review.image_id, func.max(Review.id).label("review_id"))
            .group_by(Review.image_id).subquery("latest_reviews"))


def latest_review(column: Any) -> ScalarSelect[Any]:
    """``column`` of the latest review of the enclosing query's image (None when it has none): for one row.

    One entry of ix_reviews_image_id_id per row, where joining latest_reviews would group every review.
    """
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
        Prediction.created_at.label("classified_at"), latest_review(Review.label).label("review_label"),
        latest_review(Review.reviewer).label("reviewed_by"), Image.study_uid, Image.series_uid,
        Image.sop_instance_uid, Image.modality, Image.view_position, Image.domain, Image.domain_score,
        Image.updated_at,
    ).join(Prediction, on, isouter=filters.review is None)
    conditions = _prediction_conditions(filters, indexable=not walk)
    if filters.review is not None:
        conditions.append(_review_condition(filters.review, filters.model_version))
    if filters.status is not None:
        conditions.append(Image.status == filters.status)
    else:  # ignored objects (reports, key objects, pneumoscan's own outputs) are listed only when asked for
        conditions.append(Image.status != Status.IGNORED)
    if filters.since is not None:
        conditions.append(Image.updated_at >= filters.since)
    if filters.study_uid is not None:
        conditions.append(Image.study_uid == filters.study_uid)
    if filters.domain is not None:
        conditions.append(Image.domain == filters.domain)
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
        newest = select(latest_reviews().c.review_id)
        on = Prediction.image_id == Review.image_id
        if model_version is not None:
            on = and_(on, Prediction.model_version == model_version)
        disputed = (select(Review.image_id).join(Prediction, on)
                    .where(Review.id.in_(newest), Review.label != Prediction.label))
        if model_version is not None:  # the list is exact for this version's predictions
            return Image.id.in_(disputed)
        return and_(Image.id.in_(disputed), latest_review(Review.label) != Prediction.label)
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
