"""Dispatchers: where a ready batch of paths goes (inline in this process, or to Celery)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from pneumoscan.db.queries import Result

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Accepts batches of file paths for classification."""

    def submit(self, paths: Sequence[str]) -> None:
        """Hand over one batch. Returns once the batch is safely processed or queued."""


class InlineDispatcher:
    """Embedded mode: classify the batch right here, in the caller's thread."""

    def __init__(self, classify: Callable[[Sequence[str]], list[Result]]) -> None:
        self._classify = classify

    def submit(self, paths: Sequence[str]) -> None:
        results = self._classify(paths)
        done = sum(r.status == "done" for r in results)
        log.info("classified batch of %d: %d done, %d other", len(results), done, len(results) - done)


class CeleryDispatcher:
    """Distributed mode: each batch becomes one task on the broker, for any worker to pick up.

    Publishing retries only briefly: when the broker is down ``submit`` raises within a couple of
    seconds, and the caller (the watcher keeps the paths and backs off) decides when to try again.
    """

    def __init__(self, app: Celery, *, publish_retries: int = 2) -> None:
        self._app = app
        self._policy = {"max_retries": publish_retries, "interval_start": 0.2, "interval_step": 0.5,
                        "interval_max": 1.0}

    def submit(self, paths: Sequence[str]) -> None:
        """Enqueue one ``classify_batch`` task for these paths (as the workers will see them)."""
        from pneumoscan.worker.app import CLASSIFY_BATCH

        self._send(CLASSIFY_BATCH, [str(p) for p in paths])
        log.info("enqueued batch of %d files", len(paths))

    def submit_images(self, image_ids: Sequence[int], force: bool = False) -> None:
        """Enqueue one ``reclassify_images`` task for these stored images."""
        from pneumoscan.worker.app import RECLASSIFY_IMAGES

        self._send(RECLASSIFY_IMAGES, [int(i) for i in image_ids], force)
        log.info("enqueued %d images for reclassification", len(image_ids))

    def _send(self, name: str, batch: list[str] | list[int], *extra: object) -> None:
        self._app.send_task(name, args=[batch, *extra], retry=True, retry_policy=self._policy)
