"""Reclassification: pick outdated and failed images and send them back through the pipeline in batches.

One use case for `pneumoscan reclassify` (inline or enqueued) and the nightly Celery job: the caller
says where a batch goes (``submit``); this module says which images, in what batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pneumoscan.db import Database
from pneumoscan.db.selection import ReclassifySelection, count_for_reclassification, iter_reclassification

log = logging.getLogger(__name__)

Submit = Callable[[list[int], list[str]], None]
"""Takes one batch as (image ids, their stored paths): classifies it inline, or enqueues it for the workers."""

NIGHTLY = ReclassifySelection()  # the nightly job's selection: no prediction from the current model, or failed


def count(sessions: Database, model_version: str, selection: ReclassifySelection) -> int:
    """How many images ``selection`` picks for ``model_version`` now (for a progress bar)."""
    with sessions() as session:
        return count_for_reclassification(session, selection, model_version)


def reclassify(sessions: Database, model_version: str, selection: ReclassifySelection,
               submit: Submit, *, batch_size: int, on_batch: Callable[[int], None] | None = None) -> int:
    """Hand every image ``selection`` picks to ``submit`` as batches of (ids, stored paths); returns the count.

    ``submit`` classifies inline (embedded mode) or enqueues a task (distributed mode). Pages are
    read by id, so images finished while this runs are not picked twice.
    """
    sent = 0
    with sessions() as session:
        for batch in iter_reclassification(session, selection, model_version, batch_size):
            session.rollback()  # end the read transaction before the (possibly long) submit
            submit([image_id for image_id, _ in batch], [path for _, path in batch])
            sent += len(batch)
            if on_batch is not None:
                on_batch(len(batch))
    log.info("reclassification: %d images sent for model %s", sent, model_version)
    return sent


def nightly(sessions: Database, model_version: str, submit: Submit, *, batch_size: int) -> int:
    """The nightly job: every image ``model_version`` has not classified, and every failed one, to ``submit``.

    The same selection as ``pneumoscan reclassify`` with no options.
    """
    return reclassify(sessions, model_version, NIGHTLY, submit, batch_size=batch_size)
