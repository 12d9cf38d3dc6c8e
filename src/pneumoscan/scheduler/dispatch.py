"""Dispatchers: where a ready batch of paths goes (inline in this process, or to Celery)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from pneumoscan.db import Database, outbox
from pneumoscan.db.queries import Result

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Accepts batches for classification: new files by path, or stored images by id (reclassification)."""

    def submit(self, paths: Sequence[str]) -> None:
        """Hand over one batch of files. Returns once the batch is safely processed or queued."""

    def submit_images(self, image_ids: Sequence[int], paths: Sequence[str], force: bool = False) -> None:
        """Hand over stored images (with their stored paths) to be classified again by the current model."""


class InlineDispatcher:
    """Embedded mode: classify the batch right here, in the caller's thread."""

    def __init__(self, classify: Callable[..., list[Result]],
                 report: Callable[[list[Result]], None] | None = None) -> None:
        self._classify = classify
        self._report = report

    def submit(self, paths: Sequence[str]) -> None:
        self._done(self._classify(paths))

    def submit_images(self, image_ids: Sequence[int], paths: Sequence[str], force: bool = False) -> None:
        self._done(self._classify(paths, image_ids=image_ids, force=force))

    def _done(self, results: list[Result]) -> None:
        log.info("classified batch of %d: %s", len(results), dict(Counter(r.status for r in results)))
        if self._report is not None:
            self._report(results)


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
        from pneumoscan.worker.app import CLASSIFY_BATCH

        batch = [os.path.abspath(p) for p in paths]  # as the pipeline stores them, so they settle
        with self._sessions.begin() as session:
            outbox.record(session, batch)
        self._send(CLASSIFY_BATCH, batch)
        if self._on_submit is not None:
            self._on_submit(batch)
        log.info("enqueued batch of %d files", len(paths))

    def submit_images(self, image_ids: Sequence[int], paths: Sequence[str] = (), force: bool = False) -> None:
        """Enqueue one ``reclassify_images`` task for these stored images (the worker reads their paths)."""
        from pneumoscan.worker.app import RECLASSIFY_IMAGES

        self._send(RECLASSIFY_IMAGES, [int(i) for i in image_ids], force)
        log.info("enqueued %d images for reclassification", len(image_ids))

    def queue_depth(self) -> int:
        """Messages waiting on the broker's default queue (not those a worker holds)."""
        from kombu.exceptions import ChannelError

        with self._app.connection_for_read() as connection:
            queue = self._app.conf.task_default_queue
            try:
                return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:  # Redis keeps no empty lists: a queue that does not exist holds nothing
                return 0

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
