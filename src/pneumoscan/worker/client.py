"""The worker as its callers see it: the task names, the Celery dispatcher, and the outbox reaper.

The scheduler and the CLI hand batches to workers through ``CeleryDispatcher``; nothing here imports
the tasks themselves (or TensorFlow), so the scheduler starts fast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pneumoscan import broker
from pneumoscan.db import Database, outbox

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

CLASSIFY_BATCH = "pneumoscan.classify_batch"
RECLASSIFY_IMAGES = "pneumoscan.reclassify_images"
NIGHTLY_RECLASSIFY = "pneumoscan.nightly_reclassify"
REQUEUE_STALE = "pneumoscan.requeue_stale"
SETTLE_STUDIES = "pneumoscan.settle_studies"


class CeleryDispatcher:
    """Distributed mode: each batch becomes one task on the broker, for any worker to pick up.

    Publishing retries only briefly: when the broker is down ``submit`` raises within a couple of
    seconds, and the caller (the watcher keeps the paths and backs off) decides when to try again.
    """

    def __init__(self, app: Celery, sessions: Database, *, publish_retries: int = 2,
                 on_submit: Callable[[Sequence[str]], None] | None = None) -> None:
        self._app = app
        self._sessions = sessions
        self._on_submit = on_submit
        self._policy = {"max_retries": publish_retries, "interval_start": 0.2, "interval_step": 0.5,
                        "interval_max": 1.0}

    def submit(self, paths: Sequence[str]) -> None:
        """Record the paths in the outbox, then enqueue one ``classify_batch`` task for them.

        The outbox row comes first: if publishing fails, or the broker later loses the message, the
        reaper finds the row and sends it again. Either way each file is classified at least once.
        """
        batch = [os.path.abspath(p) for p in paths]  # as the pipeline stores them, so they settle
        with self._sessions.begin() as session:
            outbox.record(session, batch)
        self._send(CLASSIFY_BATCH, batch)
        if self._on_submit is not None:
            self._on_submit(batch)
        log.info("enqueued batch of %d files", len(paths))

    def submit_images(self, image_ids: Sequence[int], paths: Sequence[str] = (), force: bool = False) -> None:
        """Enqueue one ``reclassify_images`` task for these stored images (the worker reads their paths)."""
        self._send(RECLASSIFY_IMAGES, [int(i) for i in image_ids], force)
        log.info("enqueued %d images for reclassification", len(image_ids))

    def queue_depth(self) -> int:
        """Messages waiting on the broker's queue (not those a worker holds); raises if the broker is down."""
        return broker.queue_depth(str(self._app.conf.broker_url or broker.DEFAULT_URL))

    def _send(self, name: str, batch: list[str] | list[int], *extra: object) -> None:
        self._app.send_task(name, args=[batch, *extra], retry=True, retry_policy=self._policy)


def requeue_stale(sessions: Database, dispatcher: CeleryDispatcher, older_than: float,
                  batch_size: int) -> int:
    """The outbox reaper: hand over again the files that a lost message or a dead worker left unsettled.

    A file claimed by a worker and unsettled ``older_than`` seconds later was in a batch whose worker
    died. A file never claimed is only taken as lost when the broker's queue is empty: while it is
    not, the file may simply be waiting its turn behind a backlog, and sending it again would pile
    duplicates onto that backlog. Returns how many files were sent again.
    """
    waiting = dispatcher.queue_depth()
    with sessions() as session:
        paths = outbox.stale(session, older_than, claimed_only=waiting > 0)
    for start in range(0, len(paths), batch_size):
        dispatcher.submit(paths[start:start + batch_size])
    if paths:
        log.warning("re-enqueued %d files still unsettled after %.0f s (a lost message or a dead worker)",
                    len(paths), older_than)
    return len(paths)
