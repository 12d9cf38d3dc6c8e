"""Celery app for distributed mode, built from Settings (no TensorFlow here: the scheduler must start fast)."""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab

from pneumoscan import broker
from pneumoscan.config import Settings
from pneumoscan.worker.client import NIGHTLY_RECLASSIFY, REQUEUE_STALE, SETTLE_STUDIES

SETTLE_EVERY = 5.0  # seconds between study rounds: completes studies, sends results that are due
TASK_MODULES = ["pneumoscan.worker.tasks"]


def make_app(settings: Settings) -> Celery:
    """A Celery app on ``settings.broker_url`` with at-least-once delivery and the nightly schedule.

    Messages are acknowledged after the task ran (``acks_late``), one at a time (prefetch 1), and a
    task whose process died (SIGKILL, out of memory) goes back to the queue instead of being lost.
    Idempotent writes make the redelivery harmless. Results live in the database, so no result
    backend is used.
    """
    app = Celery("pneumoscan", broker=settings.broker_url or broker.DEFAULT_URL, include=TASK_MODULES)
    hour, minute = settings.nightly_hour_minute
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_default_queue=broker.QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=settings.max_tasks_per_child,
        # Loading TensorFlow and the model in a fresh pool process can take far longer than the 4 s
        # Celery allows by default before it declares the process dead.
        worker_proc_alive_timeout=300.0,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        # Crontab entries are read in the machine's local time (set TZ in containers).
        enable_utc=False,
        beat_schedule={
            "nightly-reclassification": {
                "task": NIGHTLY_RECLASSIFY,
                "schedule": crontab(hour=str(hour), minute=str(minute)),
            },
            # The outbox reaper: a third of the bound between runs, so a stale file waits at most
            # 4/3 of PNEUMOSCAN_REQUEUE_AFTER before it is sent again.
            "requeue-stale": {
                "task": REQUEUE_STALE,
                "schedule": settings.requeue_after / 3,
                "options": {"expires": settings.requeue_after / 3},
            },
            "settle-studies": {"task": SETTLE_STUDIES, "schedule": SETTLE_EVERY, "options": {"expires": SETTLE_EVERY}},
        },
    )
    return app


def worker_argv(*, concurrency: int | None, max_tasks_per_child: int, loglevel: str,
                extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Arguments for ``app.worker_main``: a prefork pool, fair scheduling, no start-up chatter between nodes."""
    argv = ["worker", f"--loglevel={loglevel}", "--pool=prefork", f"--max-tasks-per-child={max_tasks_per_child}",
            "--without-gossip", "--without-mingle"]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    return [*argv, *extra]


_app: Celery | None = None


def get_app(settings: Settings | None = None) -> Celery:
    """This process's one Celery app, built on first use from ``settings`` (or the environment)."""
    global _app
    if _app is None:
        _app = make_app(settings or Settings())
    return _app


def __getattr__(name: str) -> Celery:
    # `celery -A pneumoscan.worker.app ...` looks up `app` here; building it lazily keeps importing
    # this module free of side effects (and of a second app beside the CLI's).
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
