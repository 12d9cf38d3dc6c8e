"""Worker tasks: thin Celery tasks that run batches through the same pipeline as embedded mode."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_process_init
from sqlalchemy import exc as sa_exc

from pneumoscan.config import Settings
from pneumoscan.db import Database, DatabaseError, open_database, outbox
from pneumoscan.db.queries import image_locations
from pneumoscan.imaging import keep_large_buffers
from pneumoscan.models.bundle import ModelBundle, load_bundle
from pneumoscan.worker.client import (
    CLASSIFY_BATCH,
    NIGHTLY_RECLASSIFY,
    RECLASSIFY_IMAGES,
    REQUEUE_STALE,
    SETTLE_STUDIES,
    CeleryDispatcher,
)
from pneumoscan.worker.client import requeue_stale as reap

log = logging.getLogger(__name__)

# Errors that say "the database is not there right now", not "this input is bad": retried with backoff.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, DatabaseError,
)
MAX_RETRIES = 100  # with the backoff cap, about eight hours of outage before a batch is given up
FILE_RETRIES = 3  # unreadable files are retried a few times, then left failed for the nightly run
# Celery's own retry policy for "the database is not there right now": exponential from 1 s, capped
# at 5 minutes, with full jitter against a thundering herd when it comes back.
RETRY_POLICY: dict[str, Any] = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": 1, "retry_backoff_max": 300,
                                "retry_jitter": True, "max_retries": MAX_RETRIES}


@dataclass
class Runtime:
    """What one worker process needs: its settings, its model bundle and its database sessions."""

    settings: Settings
    bundle: ModelBundle
    _sessions: Database | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sessions(self) -> Database:
        """The session factory, connecting (and migrating) on first use; raises if the database is down."""
        with self._lock:
            if self._sessions is None:
                self._sessions = open_database(self.settings.sqlalchemy_url)
            return self._sessions

    def dispose(self) -> None:
        """Forget connections inherited from a parent process without closing the parent's sockets."""
        if self._sessions is not None:
            self._sessions.dispose(close=False)
            self._sessions = None


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime, created on first use (the model itself loads on its first batch)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            settings = Settings()
            _runtime = Runtime(settings, load_bundle(settings.model_path))
        return _runtime


@worker_process_init.connect
def _init_worker_process(**_: Any) -> None:
    """In each pool process, after the fork: drop inherited connections, load the model, connect."""
    keep_large_buffers()  # inherited from `pneumoscan worker`; a bare `celery worker` sets it here
    if _runtime is not None:
        _runtime.dispose()
    try:
        state = runtime()
        state.bundle.load()  # TensorFlow and the model now, with GPU memory growth on
    except Exception:  # raising here would only make the pool restart this process in a loop
        log.exception("cannot load the model; tasks in this process will fail until it is fixed")
        return
    try:
        state.sessions()
    except DatabaseError as exc:  # the first task retries until the database is back
        log.warning("database not available yet: %s", exc)
    log.info("worker process ready: model %s", state.bundle.version)


def _classify(task: Task, paths: Sequence[str], image_ids: Sequence[int] | None = None,
              force: bool = False) -> dict[str, int]:
    from pneumoscan.pipeline import classify_paths

    state = runtime()
    try:
        if task.name == CLASSIFY_BATCH:
            with state.sessions().begin() as session:
                outbox.claim(session, paths)  # staleness now counts from here (see requeue_stale)
        results = classify_paths(paths, bundle=state.bundle, sessions=state.sessions(), settings=state.settings,
                                 image_ids=image_ids, force=force)
    except TRANSIENT_ERRORS as exc:  # the task's autoretry schedules the retry
        log.warning("database unavailable (%s); batch of %d will be retried", type(exc).__name__, len(paths))
        raise
    counts = Counter(r.status for r in results)
    log.info("batch of %d: %s", len(results), dict(counts))
    unreadable = [r.path for r in results if r.status == "failed" and os.path.exists(r.path)]
    if unreadable and task.name == CLASSIFY_BATCH and task.request.retries < FILE_RETRIES:
        # Only the failed files go round again; the rest of the batch is stored already.
        raise task.retry(args=[unreadable], countdown=2 ** task.request.retries, max_retries=MAX_RETRIES)
    return dict(counts)


@shared_task(bind=True, name=CLASSIFY_BATCH, **RETRY_POLICY)
def classify_batch(self: Task, paths: list[str]) -> dict[str, int]:
    """Classify a batch of files (paths as seen by the workers) and store the results."""
    return _classify(self, paths)


@shared_task(bind=True, name=RECLASSIFY_IMAGES, **RETRY_POLICY)
def reclassify_images(self: Task, image_ids: list[int], force: bool = False) -> dict[str, int]:
    """Run stored images (by id) through the current model again, reading each from its stored path.

    ``force`` (``reclassify --all``) decodes known contents again instead of skipping them.
    """
    with runtime().sessions()() as session:
        found = image_locations(session, image_ids)
    return _classify(self, [path for _, path in found], [image_id for image_id, _ in found], force)


@shared_task(bind=True, name=REQUEUE_STALE, max_retries=0)  # beat sends the next one soon anyway
def requeue_stale(self: Task) -> int:
    """The outbox reaper (Celery beat): enqueue again files unsettled past PNEUMOSCAN_REQUEUE_AFTER."""
    state = runtime()
    sessions = state.sessions()
    return reap(sessions, CeleryDispatcher(self.app, sessions), state.settings.requeue_after, state.settings.batch_size)


@shared_task(bind=True, name=SETTLE_STUDIES, max_retries=0)  # beat sends the next one soon anyway
def settle_studies(self: Task) -> dict[str, int]:
    """Complete the studies that went quiet and send the study results that are due (Celery beat, every few s)."""
    from pneumoscan.dicomnet.sender import settle_and_send

    state = runtime()
    done = settle_and_send(state.sessions(), state.settings, state.bundle)
    return {"settled": done.settled, "sent": done.sent, "failed": done.failed}


@shared_task(bind=True, name=NIGHTLY_RECLASSIFY, **{**RETRY_POLICY, "max_retries": 10})
def nightly_reclassify(self: Task) -> int:
    """The nightly job (Celery beat): enqueue, in batches, every image the current model has not classified.

    The same selection as ``pneumoscan reclassify`` with no options: no prediction from the current
    model version, or failed.
    """
    from pneumoscan.db.queries import ReclassifySelection
    from pneumoscan.scheduler.reclassify import reclassify

    state = runtime()
    dispatcher = CeleryDispatcher(self.app, state.sessions())
    return reclassify(state.sessions(), state.bundle.version, ReclassifySelection(),
                      dispatcher.submit_images, batch_size=state.settings.batch_size)
