"""Distributed mode under load and under faults: real Redis, PostgreSQL, `pneumoscan worker` and watcher processes."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from celery import Celery
from cluster import READY_TIMEOUT, Database, PrivateRedis, Service, TcpProxy, assert_each_once, settled, wait_quiet
from support import xrays

from pneumoscan.config import Settings
from pneumoscan.worker.app import make_app
from pneumoscan.worker.client import NIGHTLY_RECLASSIFY, CeleryDispatcher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

WAIT = 90.0  # for work to finish; generous because the machine may be busy


@pytest.fixture
def app(broker_url: str) -> Iterator[Celery]:
    """A Celery app on the test's broker, built from settings as every process builds it."""
    celery_app = make_app(Settings(broker_url=broker_url, patient_salt="test-salt"))
    yield celery_app
    celery_app.close()


@pytest.fixture
def dispatcher(app: Celery, database: Database) -> Iterator[CeleryDispatcher]:
    """The real Celery dispatcher with its outbox in the test's database, as the watcher uses it."""
    from pneumoscan.db import open_database

    sessions = open_database(database.url)
    yield CeleryDispatcher(app, sessions)
    sessions.dispose()


def _predictions(db: Database) -> int:
    return db.count("SELECT count(*) FROM predictions")


def test_300_files_with_two_workers_give_300_images_and_300_predictions(
        tmp_path: Path, tiny_bundle: Any, database: Database, cluster_env: dict[str, str],
        launch: Callable[..., Service], start_worker: Callable[..., Service]) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # Both nodes start at once on an empty database: their migrations must not collide.
    workers = [start_worker(cluster_env, f"w{n}", wait=False) for n in (1, 2)]
    for worker in workers:
        worker.wait_for_log("worker process ready", READY_TIMEOUT)
    watcher = launch(["watch", str(inbox)], cluster_env, "watch")
    watcher.wait_for_log("watching", 30)

    paths = xrays.distinct_pngs(inbox, 300)

    helpers.wait_for(settled(database, 300), WAIT, interval=0.5, message="300 predictions")
    wait_quiet(1.0)  # a late duplicate would show up now
    assert_each_once(database, paths, tiny_bundle.version)
    for worker in workers:  # the batches were shared, and nothing failed on the unique keys
        assert "succeeded" in worker.log(), worker.log()
        assert "IntegrityError" not in worker.log() and "Traceback" not in worker.log(), worker.log()
    assert "dispatch failed" not in watcher.log(), watcher.log()
    assert "enqueued a batch of 8 for the workers" in watcher.log(), watcher.log()


def test_a_worker_killed_mid_batch_has_its_batch_redelivered(
        tmp_path: Path, tiny_bundle: Any, database: Database, cluster_env: dict[str, str],
        dispatcher: CeleryDispatcher, start_worker: Callable[..., Service]) -> None:
    paths = xrays.distinct_pngs(tmp_path / "files", 320)
    worker = start_worker(cluster_env, "w1")
    [child] = worker.pool_children()

    # One task of 320 files, stored 8 at a time (PNEUMOSCAN_BATCH_SIZE): kill once the first are in.
    dispatcher.submit([str(p) for p in paths])
    helpers.wait_for(lambda: _predictions(database) >= 8, WAIT, interval=0.02, message="the first stored files")
    os.kill(child, signal.SIGKILL)
    stored_at_kill = _predictions(database)
    assert stored_at_kill < len(paths), "the batch finished before the kill; the test needs a larger batch"

    helpers.wait_for(settled(database, len(paths)), WAIT, interval=0.5, message="the redelivered batch")
    wait_quiet(1.0)
    assert_each_once(database, paths, tiny_bundle.version)
    log = worker.log()
    assert "WorkerLostError" in log and "signal 9" in log, log
    assert child not in worker.pool_children() and worker.alive()


def test_the_scheduler_loses_no_file_while_redis_is_down(
        tmp_path: Path, tiny_bundle: Any, database: Database, private_redis: PrivateRedis,
        launch: Callable[..., Service], start_worker: Callable[..., Service]) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env = helpers.pneumoscan_env(tmp_path / "data", tiny_bundle.path, PNEUMOSCAN_DATABASE_URL=database.url,
                                 PNEUMOSCAN_BROKER_URL=private_redis.url)
    worker = start_worker(env, "w1")
    scheduler = launch(["scheduler", str(inbox)], env, "scheduler")  # the watcher and beat, as deployed
    scheduler.wait_for_log("watching", 30)
    before = xrays.distinct_pngs(inbox, 8, prefix="before")
    helpers.wait_for(settled(database, 8), WAIT, interval=0.3, message="the files before the outage")

    private_redis.stop()
    during = xrays.distinct_pngs(inbox, 20, prefix="during", start=8)
    scheduler.wait_for_log("dispatch failed", 30)
    wait_quiet(2.0)  # the watcher keeps failing and backing off for a while
    private_redis.start()

    helpers.wait_for(settled(database, 28), WAIT, interval=0.5, message="the files dropped during the outage")
    assert_each_once(database, before + during, tiny_bundle.version)
    assert scheduler.alive() and worker.alive()
    scheduler.stop()
    assert scheduler.proc.returncode == 0, scheduler.log()
    assert "stopped" in scheduler.log() and "Traceback" not in scheduler.log(), scheduler.log()


def test_a_batch_retries_while_postgresql_is_down_and_succeeds_after(
        tmp_path: Path, tiny_bundle: Any, database: Database, broker_url: str, pg_proxy: TcpProxy,
        dispatcher: CeleryDispatcher, start_worker: Callable[..., Service]) -> None:
    paths = xrays.distinct_pngs(tmp_path / "files", 320)
    env = helpers.pneumoscan_env(tmp_path / "data", tiny_bundle.path, PNEUMOSCAN_BROKER_URL=broker_url,
                                 PNEUMOSCAN_DATABASE_URL=database.via(pg_proxy.port))
    worker = start_worker(env, "w1")

    dispatcher.submit([str(p) for p in paths])
    helpers.wait_for(lambda: _predictions(database) >= 8, WAIT, interval=0.02, message="the first stored files")
    pg_proxy.kill()  # the database goes away in the middle of the batch
    assert _predictions(database) < len(paths), "the batch finished before the outage; it needs more files"
    worker.wait_for_log("database unavailable", 30)
    wait_quiet(3.0)  # a few retries against a database that is still down
    pg_proxy.start()

    helpers.wait_for(settled(database, len(paths)), WAIT, interval=0.5, message="the retried batch")
    wait_quiet(1.0)
    assert_each_once(database, paths, tiny_bundle.version)
    assert "Retry in" in worker.log(), worker.log()


def test_the_nightly_job_reclassifies_exactly_the_outdated_and_failed_images(
        tmp_path: Path, tiny_bundle: Any, database: Database, cluster_env: dict[str, str],
        app: Celery, start_worker: Callable[..., Service]) -> None:
    from pneumoscan.db import open_database
    from pneumoscan.db.writes import save_results
    from pneumoscan.domain import Result
    from pneumoscan.pipeline import classify_paths

    files = tmp_path / "files"
    current = xrays.distinct_pngs(files, 4, prefix="current")
    outdated = xrays.distinct_pngs(files, 4, prefix="outdated", start=4)
    unread = xrays.distinct_pngs(files, 2, prefix="unread", start=8)  # could not be read then; can be now
    undecoded = xrays.distinct_pngs(files, 1, prefix="undecoded", start=10)  # read, decoding failed then
    corrupt = files / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(500))
    settings = Settings(data_dir=tmp_path / "data", model=tiny_bundle.path, batch_size=8, patient_salt="test-salt")
    sessions = open_database(database.url)
    try:
        classify_paths(current, bundle=tiny_bundle, sessions=sessions, settings=settings)
        old = helpers.bundle_as_version(tiny_bundle, tmp_path / "old", "tiny-old-0")
        classify_paths([*outdated, corrupt], bundle=old, sessions=sessions, settings=settings)
        with sessions.begin() as session:
            save_results(session, [Result(str(p), "failed", reason="permission denied reading the file")
                                   for p in unread])
            save_results(session, [Result(str(undecoded[0]), "failed", kind="png", reason="decoder busy",
                                          sha256=hashlib.sha256(undecoded[0].read_bytes()).hexdigest())])
    finally:
        sessions.dispose()
    before = set(database.rows("SELECT p.id, i.path, p.model_version FROM predictions p "
                               "JOIN images i ON i.id = p.image_id"))
    assert len(before) == 8

    worker = start_worker(cluster_env, "w1")
    app.send_task(NIGHTLY_RECLASSIFY)  # what beat sends at PNEUMOSCAN_NIGHTLY_AT
    wanted = {str(p) for p in [*current, *outdated, *unread, *undecoded]}

    def current_paths() -> set[str]:
        return {path for (path,) in database.rows(
            "SELECT i.path FROM predictions p JOIN images i ON i.id = p.image_id WHERE p.model_version = %s",
            tiny_bundle.version)}

    helpers.wait_for(lambda: current_paths() == wanted, WAIT, interval=0.3, message="the reclassified images")
    wait_quiet(1.0)
    assert "reclassification: 7 images sent" in worker.log(), worker.log()
    after = set(database.rows("SELECT p.id, i.path, p.model_version FROM predictions p "
                              "JOIN images i ON i.id = p.image_id"))
    assert before <= after  # old predictions stay, the current ones untouched
    assert len(after) == 8 + 7
    statuses = dict(database.rows("SELECT path, status FROM images"))
    assert len(statuses) == database.count("SELECT count(*) FROM images") == 12  # no duplicate rows
    assert statuses.pop(str(corrupt)) == "rejected"
    assert set(statuses.values()) == {"done"}


@pytest.mark.timeout(330)  # two worker start-ups, then up to two minutes of recovery
def test_a_whole_worker_killed_has_its_batch_done_by_a_survivor_within_two_minutes(
        tmp_path: Path, tiny_bundle: Any, database: Database, cluster_env: dict[str, str],
        launch: Callable[..., Service], start_worker: Callable[..., Service]) -> None:
    """SIGKILL of a worker's main process and its pool (OOM kill, power loss, docker kill) with the default
    PNEUMOSCAN_REQUEUE_AFTER: its unacknowledged batch would wait out the 3600 s visibility timeout, but
    the outbox reaper (beat, in the scheduler) sends it again."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    victim = start_worker(cluster_env, "victim")
    scheduler = launch(["scheduler", str(inbox)], cluster_env, "scheduler")
    scheduler.wait_for_log("watching", 30)
    paths = xrays.distinct_pngs(inbox, 120)
    # Kill while the victim holds a batch it has claimed and not yet stored, so that only the reaper
    # can bring that batch back (killing between batches would leave nothing to recover).
    holding = "SELECT count(*) FROM queued_files WHERE claimed_at IS NOT NULL"

    def frozen_holding_a_batch() -> bool:
        """Freeze the victim (SIGSTOP) and look: a claim seen while it cannot move is one the kill strands."""
        if _predictions(database) < 8 or database.count(holding) == 0:
            return False
        os.killpg(victim.proc.pid, signal.SIGSTOP)
        if database.count(holding) > 0:
            return True
        os.killpg(victim.proc.pid, signal.SIGCONT)  # it stored the batch in between: try again
        return False

    helpers.wait_for(frozen_holding_a_batch, WAIT, interval=0.005, message="the victim in the middle of a batch")
    os.killpg(victim.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    assert _predictions(database) < len(paths), "all files were done before the kill; the test needs more"
    survivor = start_worker(cluster_env, "survivor")

    helpers.wait_for(settled(database, len(paths)), 120, interval=0.5, message="all files after the kill")
    assert time.monotonic() - killed_at <= 120
    wait_quiet(1.0)  # a late duplicate would show up now
    assert_each_once(database, paths, tiny_bundle.version)
    assert database.count("SELECT count(*) FROM queued_files") == 0
    assert "re-enqueued" in survivor.log() + scheduler.log()
    assert "IntegrityError" not in survivor.log()


def test_files_survive_a_broker_that_loses_its_queue(
        tmp_path: Path, tiny_bundle: Any, database: Database, private_redis: PrivateRedis,
        launch: Callable[..., Service], start_worker: Callable[..., Service]) -> None:
    """FLUSHALL (a restart without persistence, a lagging replica, an eviction) after files were enqueued
    and before any worker took them: the outbox still has them, and beat's reaper sends them again
    without a restart of the watcher."""
    import redis

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env = helpers.pneumoscan_env(tmp_path / "data", tiny_bundle.path, PNEUMOSCAN_DATABASE_URL=database.url,
                                 PNEUMOSCAN_BROKER_URL=private_redis.url, PNEUMOSCAN_REQUEUE_AFTER="6")
    scheduler = launch(["scheduler", str(inbox)], env, "scheduler")
    scheduler.wait_for_log("watching", 30)
    paths = xrays.distinct_pngs(inbox, 24)
    helpers.wait_for(lambda: database.count("SELECT count(*) FROM queued_files") == 24, 30, interval=0.2,
                     message="24 files in the outbox")
    client = redis.Redis.from_url(private_redis.url)
    helpers.wait_for(lambda: client.llen("celery") >= 3, 10, interval=0.1, message="3 batches on the broker")
    client.flushall()
    assert client.llen("celery") == 0

    start_worker(env, "w1")
    helpers.wait_for(settled(database, 24), WAIT, interval=0.5, message="the files the broker lost")
    wait_quiet(1.0)
    assert_each_once(database, paths, tiny_bundle.version)
    assert "re-enqueued 24 files" in scheduler.log() or "re-enqueued" in scheduler.log() + _worker_logs(tmp_path)
    assert scheduler.alive()


def test_the_scheduler_re_enqueues_what_a_previous_run_left_unsettled_when_it_starts(
        tmp_path: Path, tiny_bundle: Any, database: Database, cluster_env: dict[str, str],
        launch: Callable[..., Service], start_worker: Callable[..., Service]) -> None:
    from datetime import UTC, datetime, timedelta

    from pneumoscan.db import open_database, outbox

    paths = xrays.distinct_pngs(tmp_path / "elsewhere", 5)  # not in the watched folder: only the outbox knows
    sessions = open_database(database.url)
    try:
        with sessions.begin() as session:
            outbox.record(session, [str(p) for p in paths], now=datetime.now(UTC) - timedelta(minutes=10))
    finally:
        sessions.dispose()
    start_worker(cluster_env, "w1")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    scheduler = launch(["scheduler", str(inbox)], cluster_env, "scheduler")
    helpers.wait_for(settled(database, 5), WAIT, interval=0.3, message="the files left in the outbox")
    assert "re-enqueued 5 files" in scheduler.log(), scheduler.log()
    assert_each_once(database, paths, tiny_bundle.version)


def _worker_logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.glob("w*.log"))
