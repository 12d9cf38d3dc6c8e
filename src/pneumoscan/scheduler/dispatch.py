"""Dispatchers: where a ready batch of paths goes. The protocol, and its inline form for embedded mode.

Distributed mode's form (a task on the broker per batch) is ``pneumoscan.worker.client.CeleryDispatcher``;
the CLI picks one and passes it in, so the scheduler never imports the worker.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from pneumoscan.domain import Result

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
