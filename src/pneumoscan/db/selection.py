"""Which stored images a reclassification run picks, read in batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.orm import Session

from pneumoscan.db.schema import Image, Prediction
from pneumoscan.domain import Status


@dataclass(frozen=True)
class ReclassifySelection:
    """Which images a reclassification run sends back through the pipeline.

    By default: every image without a prediction from the current model version, and every failed
    one, but no rejected or ignored image (its bytes are not a usable image, or not one for the model).
    ``everything`` drops that rule,
    ``status`` keeps only images with this status (rejected included when asked for), and ``since``
    keeps only images updated at or after this time.
    """

    everything: bool = False
    since: datetime | None = None
    status: Status | None = None  # also taken as text, as the CLI passes it

    def __post_init__(self) -> None:
        if self.status is not None:
            object.__setattr__(self, "status", Status(self.status))


def reclassify_statement(selection: ReclassifySelection, model_version: str) -> Select:
    """SELECT image id and stored path of the images ``selection`` picks, in id order."""
    statement = select(Image.id, Image.path)
    if not selection.everything:
        current = exists().where(Prediction.image_id == Image.id, Prediction.model_version == model_version)
        statement = statement.where(or_(~current, Image.status == Status.FAILED))
        if selection.status is None:
            statement = statement.where(Image.status.not_in([Status.REJECTED, Status.IGNORED]))
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
