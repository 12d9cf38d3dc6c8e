"""Worker tasks: thin Celery tasks that run batches through the same pipeline and services as embedded mode."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from celery import Task, shared_task
from celery.signals import worker_process_init
from sqlalchemy import exc as sa_exc

from pneumoscan.config import Settings
from pneumoscan.db import Database, DatabaseError, open_database, outbox
from pneumoscan.db.selection import image_locations
from pneumoscan.dicomnet.stow import results_sender
from pneumoscan.domain import Outcome
from pneumoscan.memory import keep_large_buffers
from pneumoscan.models.bundle import ModelBundle, load_bundle
from pneumoscan.models.engine import EngineConfig
from pneumoscan.services import reclassify, retention, studies
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
class _Process:
    """What one worker process holds: its settings, its model bundle and (once connected) its database."""

    settings: Settings
    bundle: ModelBundle
    database: Database | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class PneumoscanTask(Task):
    """The base of every pneumoscan task: this process's settings, model bundle and database, made on first use.

    Celery makes one instance of each task per process; the state lives on this base class, so that
    all tasks of a process share one model and one connection pool. ``after_fork`` runs in each pool
    process (``worker_process_init``): the parent's connections are dropped there and the model loads
    there, never in the Celery parent.
    """

    _process: ClassVar[_Process | None] = None
    _process_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def process(cls) -> _Process:
        """This process's state, created on first use (the model itself loads on its first batch)."""
        with PneumoscanTask._process_lock:
            if PneumoscanTask._process is None:
                settings = Settings()
                bundle = load_bundle(settings.model_path, runtime=EngineConfig.from_settings(settings))
                PneumoscanTask._process = _Process(settings, bundle)
            return PneumoscanTask._process

    @property
    def settings(self) -> Settings:
        return self.process().settings

    @property
    def bundle(self) -> ModelBundle:
        return self.process().bundle

    @property
    def db(self) -> Database:
        """The session factory, connecting (and migrating) on first use; raises if the database is down."""
        return self.connect()

    @classmethod
    def connect(cls) -> Database:
        """This process's database, connected (and migrated) on first use; raises if the database is down."""
        state = cls.process()
        with state.lock:
            if state.database is None:
                state.database = open_database(state.settings.sqlalchemy_url)
            return state.database

    @classmethod
    def after_fork(cls) -> None:
        """In a fresh pool process: forget inherited connections, then load the model and connect."""
        inherited = PneumoscanTask._process
        if inherited is not None and inherited.database is not None:
            inherited.database.dispose(close=False)  # the parent's sockets stay open for the parent
            inherited.database = None
        try:
            state = cls.process()
            state.bundle.load()  # TensorFlow and the model now, with GPU memory growth on
        except Exception:  # raising here would only make the pool restart this process in a loop
            log.exception("cannot load the model; tasks in this process will fail until it is fixed")
            return
        try:
            cls.connect()  # now, rather than on the first batch
        except DatabaseError as exc:  # the first task retries until the database is back
            log.warning("database not available yet: %s", exc)
        log.info("worker process ready: model %s", state.bundle.version)


@worker_process_init.connect
def _init_worker_process(**_: Any) -> None:
    """In each pool process, after the fork."""
    keep_large_buffers()  # inherited from `pneumoscan worker`; a bare `celery worker` sets it here
    PneumoscanTask.after_fork()


def _classify(task: PneumoscanTask, paths: Sequence[str], image_ids: Sequence[int] | None = None,
              force: bool = False) -> dict[str, int]:
    from pneumoscan.pipeline import classify_paths

    try:
        if task.name == CLASSIFY_BATCH:
            with task.db.begin() as session:
                outbox.claim(session, paths)  # staleness now counts from here (see requeue_stale)
        results = classify_paths(paths, bundle=task.bundle, sessions=task.db, settings=task.settings,
                                 image_ids=image_ids, force=force)
    except TRANSIENT_ERRORS as exc:  # the task's autoretry schedules the retry
        log.warning("database unavailable (%s); batch of %d will be retried", type(exc).__name__, len(paths))
        raise
    counts = {str(outcome): n for outcome, n in Counter(r.status for r in results).items()}
    log.info("batch of %d: %s", len(results), counts)
    unreadable = [r.path for r in results if r.status == Outcome.FAILED and os.path.exists(r.path)]
    if unreadable and task.name == CLASSIFY_BATCH and task.request.retries < FILE_RETRIES:
        # Only the failed files go round again; the rest of the batch is stored already.
        raise task.retry(args=[unreadable], countdown=2 ** task.request.retries, max_retries=MAX_RETRIES)
    return counts


@shared_task(bind=True, base=PneumoscanTask, name=CLASSIFY_BATCH, **RETRY_POLICY)
def classify_batch(self: PneumoscanTask, paths: list[str]) -> dict[str, int]:
    """Classify a batch of files (paths as seen by the workers) and store the results."""
    return _classify(self, paths)


@shared_task(bind=True, base=PneumoscanTask, name=RECLASSIFY_IMAGES, **RETRY_POLICY)
def reclassify_images(self: PneumoscanTask, image_ids: list[int], force: bool = False) -> dict[str, int]:
    """Run stored images (by id) through the current model again, reading each from its stored path.

    ``force`` (``reclassify --all``) decodes known contents again instead of skipping them.
    """
    with self.db() as session:
        found = image_locations(session, image_ids)
    return _classify(self, [path for _, path in found], [image_id for image_id, _ in found], force)


@shared_task(bind=True, base=PneumoscanTask, name=REQUEUE_STALE, max_retries=0)  # beat sends the next one soon
def requeue_stale(self: PneumoscanTask) -> int:
    """The outbox reaper (Celery beat): enqueue again files unsettled past PNEUMOSCAN_REQUEUE_AFTER."""
    return reap(self.db, CeleryDispatcher(self.app, self.db), self.settings.requeue_after, self.settings.batch_size)


@shared_task(bind=True, base=PneumoscanTask, name=SETTLE_STUDIES, max_retries=0)  # beat sends the next one soon
def settle_studies(self: PneumoscanTask) -> dict[str, int]:
    """Complete the studies that went quiet and send the study results that are due (Celery beat, every few s)."""
    done = studies.settle_and_send(self.db, self.settings, self.bundle, results_sender(self.settings))
    return asdict(done)  # settled, sent, failed


@shared_task(bind=True, base=PneumoscanTask, name=NIGHTLY_RECLASSIFY, **{**RETRY_POLICY, "max_retries": 10})
def nightly_reclassify(self: PneumoscanTask) -> int:
    """The nightly job (Celery beat): enqueue, in batches, every image the current model has not classified.

    The same selection as ``pneumoscan reclassify`` with no options: no prediction from the current
    model version, or failed.
    """
    if self.settings.spool_retention_days is not None:  # the receiver's copies of delivered studies, never the inbox
        retention.purge_spool(self.db, retention.spool_folders(self.settings), self.settings.spool_retention_days)
    dispatcher = CeleryDispatcher(self.app, self.db)
    return reclassify.nightly(self.db, self.bundle.version, dispatcher.submit_images,
                              batch_size=self.settings.batch_size)
