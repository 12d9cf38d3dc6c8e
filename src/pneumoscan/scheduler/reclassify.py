"""Reclassification: pick outdated and failed images and send them back through the pipeline in batches."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Task, shared_task
from sqlalchemy.orm import Session, sessionmaker

from pneumoscan.db.queries import ReclassifySelection, iter_reclassification
from pneumoscan.worker.app import NIGHTLY_RECLASSIFY

log = logging.getLogger(__name__)

Submit = Callable[[list[int], list[str]], None]


def reclassify(sessions: sessionmaker[Session], model_version: str, selection: ReclassifySelection,
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


@shared_task(bind=True, name=NIGHTLY_RECLASSIFY, max_retries=10)
def nightly_reclassify(self: Task) -> int:
    """The nightly job (Celery beat): enqueue, in batches, every image the current model has not classified.

    The same selection as ``pneumoscan reclassify`` with no options: no prediction from the current
    model version, or failed.
    """
    from pneumoscan.scheduler.dispatch import CeleryDispatcher
    from pneumoscan.worker.tasks import TRANSIENT_ERRORS, backoff, runtime

    state = runtime()
    dispatcher = CeleryDispatcher(self.app, state.sessions())
    try:
        return reclassify(state.sessions(), state.bundle.version, ReclassifySelection(),
                          lambda ids, _paths: dispatcher.submit_images(ids), batch_size=state.settings.batch_size)
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc

