"""Celery beat in a thread of the scheduler process, next to the watcher (one process, one container)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType

from celery import Celery
from celery.beat import Service

log = logging.getLogger(__name__)


class BeatThread:
    """Runs Celery beat for ``app`` in a daemon thread while the context is open.

    The schedule's last-run times are kept in ``schedule_file``, so a restart neither repeats nor
    skips a nightly run. Leaving the context stops beat and waits a bounded time for it.
    """

    def __init__(self, app: Celery, schedule_file: Path, *, max_interval: float = 1.0) -> None:
        self._app = app
        self._schedule_file = schedule_file
        # A short tick lets the thread notice a stop request quickly.
        self._service = Service(app, max_interval=max_interval, schedule_filename=str(schedule_file),
                                remote_control=False)
        self._thread = threading.Thread(target=self._run, name="celery-beat", daemon=True)

    def _run(self) -> None:
        self._app.set_current()
        try:
            self._service.start()
        except Exception:
            log.exception("celery beat stopped with an error")

    def __enter__(self) -> BeatThread:
        self._schedule_file.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        log.info("celery beat started (schedule kept in %s)", self._schedule_file)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._service.stop(wait=False)
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            log.warning("celery beat did not stop within 10 s; leaving it to exit with the process")
