"""The write path's clean-up: rejected earlier versions of a file that a newer content at its path replaces."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session, aliased

from pneumoscan.db.schema import Image, Prediction, Review, Sighting
from pneumoscan.domain import Status


def drop_replaced_rejects(session: Session, stored: Iterable[tuple[str, int]]) -> int:
    """Remove rejected images that were only ever seen at a path now holding other content; say how many.

    A file written slowly, in chunks, is read while incomplete: each partial version is its own content,
    rejected as truncated. Once a later version of the path is stored (``stored``: its path and image id),
    those partial versions say nothing about any file: they are deleted, with their sightings. A rejected
    image also seen at another path, or with a prediction or a review, stays. One read per 500 paths, and
    a delete only when there is something to delete, so a batch stays a handful of writes.
    """
    pairs = sorted(set(stored))
    current = {image_id for _, image_id in pairs}
    dropped = 0
    for start in range(0, len(pairs), _PATHS_PER_STATEMENT):
        paths = [path for path, _ in pairs[start:start + _PATHS_PER_STATEMENT]]
        elsewhere = aliased(Sighting)
        replaced = (select(Image.id).join(Sighting, Sighting.image_id == Image.id)
                    .where(Sighting.path.in_(paths), Image.status == Status.REJECTED,
                           ~exists().where(elsewhere.image_id == Image.id, elsewhere.path != Sighting.path),
                           ~exists().where(Prediction.image_id == Image.id),
                           ~exists().where(Review.image_id == Image.id)))
        ids = sorted(set(session.execute(replaced).scalars()) - current)
        if ids:
            session.execute(delete(Sighting).where(Sighting.image_id.in_(ids)))
            session.execute(delete(Image).where(Image.id.in_(ids)))
            dropped += len(ids)
    return dropped


_PATHS_PER_STATEMENT = 500
