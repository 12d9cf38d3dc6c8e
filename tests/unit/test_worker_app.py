"""The Celery app built from settings, and the Celery dispatcher when the broker is away (no services needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.schedules import crontab

from pneumoscan.config import Settings
from pneumoscan.db import outbox
from pneumoscan.scheduler.batcher import MicroBatcher
from pneumoscan.worker.app import make_app, worker_argv
from pneumoscan.worker.client import CLASSIFY_BATCH, NIGHTLY_RECLASSIFY, RECLASSIFY_IMAGES, CeleryDispatcher


def test_app_is_at_least_once_json_and_one_at_a_time() -> None:
    app = make_app(Settings(broker_url="redis://127.0.0.1:1/0", patient_salt="test-salt", visibility_timeout=7200,
                            max_tasks_per_child=50))
    conf = app.conf
    assert conf.broker_url == "redis://127.0.0.1:1/0"
    assert (conf.task_serializer, list(conf.accept_content)) == ("json", ["json"])
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_max_tasks_per_child == 50
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    app.loader.import_default_modules()
    assert {CLASSIFY_BATCH, RECLASSIFY_IMAGES, NIGHTLY_RECLASSIFY} <= set(app.tasks)


@pytest.mark.parametrize(("nightly_at", "hour", "minute"), [("02:00", 2, 0), ("23:45", 23, 45), ("7:05", 7, 5)])
def test_nightly_schedule_is_local_time_and_configurable(nightly_at: str, hour: int, minute: int) -> None:
    app = make_app(Settings(nightly_at=nightly_at))
    entry = app.conf.beat_schedule["nightly-reclassification"]
    assert entry["task"] == NIGHTLY_RECLASSIFY
    assert entry["schedule"] == crontab(hour=str(hour), minute=str(minute))
    assert app.conf.enable_utc is False  # crontab in the machine's local time
    assert Settings().nightly_at == "02:00"


@pytest.mark.parametrize("value", ["24:00", "2am", "12:60", ""])
def test_bad_nightly_times_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="nightly_at"):
        Settings(nightly_at=value)


def test_worker_arguments() -> None:
    argv = worker_argv(concurrency=3, max_tasks_per_child=10, loglevel="DEBUG", extra=["--hostname", "a@%h"])
    assert argv[0] == "worker"
    assert {"--concurrency=3", "--max-tasks-per-child=10", "--loglevel=DEBUG", "--pool=prefork"} <= set(argv)
    assert argv[-2:] == ["--hostname", "a@%h"]
    assert not any(a.startswith("--concurrency") for a in worker_argv(concurrency=None, max_tasks_per_child=1,
                                                                       loglevel="INFO"))


def test_the_app_module_does_not_import_tensorflow() -> None:
    code = ("import sys, pneumoscan.worker.app as a; a.app.loader.import_default_modules(); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dispatcher_fails_fast_when_the_broker_is_down_and_the_batch_is_kept(sessions: Any) -> None:
    app = make_app(Settings(broker_url=f"redis://127.0.0.1:{_closed_port()}/0", patient_salt="test-salt"))
    batcher = MicroBatcher(CeleryDispatcher(app, sessions), batch_size=2, max_wait=0)
    batcher.add(["/inbox/a.png", "/inbox/b.png"])
    started = time.monotonic()
    with pytest.raises(Exception, match="onnect"):
        batcher.submit_due()
    assert time.monotonic() - started < 10
    assert len(batcher) == 2  # the watcher retries these later
    with sessions() as session:  # and the outbox has them, for the reaper should the watcher die now
        later = datetime.now(UTC) + timedelta(seconds=1)
        assert outbox.stale(session, 0, now=later) == ["/inbox/a.png", "/inbox/b.png"]
    app.close()
