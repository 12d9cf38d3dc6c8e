"""The watcher end to end: watchdog events, quiet period, micro-batches, inline dispatch into SQLite."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import helpers
import pytest
from support import dicoms, xrays

from pneumoscan.domain import Result
from pneumoscan.pipeline import classify_paths
from pneumoscan.scheduler.batcher import MicroBatcher
from pneumoscan.scheduler.dispatch import InlineDispatcher
from pneumoscan.scheduler.watcher import Watcher

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0  # generous: the machine may be busy; the happy path takes about a second


def _rows(settings: Any, sql: str, *args: Any) -> list[sqlite3.Row]:
    with sqlite3.connect(settings.sqlalchemy_url.removeprefix("sqlite:///")) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql, args).fetchall()


def _images(settings: Any) -> dict[str, sqlite3.Row]:
    return {Path(r["path"]).name: r for r in _rows(settings, "SELECT * FROM images")}


def _predictions(settings: Any) -> int:
    return int(_rows(settings, "SELECT count(*) AS n FROM predictions")[0]["n"])


class Recording:
    """Wraps the real classify function to remember what each batch returned (observation only)."""

    def __init__(self, classify: Any) -> None:
        self._classify = classify
        self.results: list[Result] = []
        self._lock = threading.Lock()

    def __call__(self, paths: Sequence[str]) -> list[Result]:
        results = self._classify(paths)
        with self._lock:
            self.results.extend(results)
        return results

    def seen(self) -> set[str]:
        with self._lock:
            return {Path(r.path).name for r in self.results}


@contextmanager
def running_watcher(inbox: Path, bundle: Any, sessions: Any, settings: Any,
                    quiet_period: float | None = None,
                    submit_when_idle: bool = False) -> Iterator[tuple[Watcher, Recording]]:
    """A Watcher on a background thread, stopped and joined on exit (the test fails if it hangs)."""
    classify = Recording(partial(classify_paths, bundle=bundle, sessions=sessions, settings=settings))
    batcher = MicroBatcher(InlineDispatcher(classify), settings.batch_size, settings.max_batch_wait,
                           submit_when_idle=submit_when_idle)
    watcher = Watcher(inbox, batcher, settings.quiet_period if quiet_period is None else quiet_period,
                      poll_interval=0.05)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            watcher.run()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-watcher", daemon=True)
    thread.start()
    try:
        assert watcher.started.wait(WAIT) or errors, "watcher did not start"
        assert not errors, errors
        yield watcher, classify
    finally:
        watcher.stop()
        thread.join(WAIT)
    assert not thread.is_alive(), "watcher did not stop"
    assert not errors, errors


def test_watch_classifies_dropped_files(inbox: Path, tiny_bundle: Any, sessions: Any, settings: Any) -> None:
    with running_watcher(inbox, tiny_bundle, sessions, settings) as (_, classify):
        xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "a.jpeg")
        xrays.write_png(xrays.NORMAL_IMAGES[1], inbox / "b.png")
        dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[0], inbox / "sub" / "c.dcm")
        # Ignored by rule: a hidden file and an unfinished download.
        xrays.write_jpeg(xrays.NORMAL_IMAGES[2], inbox / ".hidden.jpeg")
        xrays.write_jpeg(xrays.NORMAL_IMAGES[3], inbox / "d.jpeg.part")
        # A download that completes by renaming into place.
        xrays.write_jpeg(xrays.PNEUMONIA_IMAGES[1], inbox / "e.jpeg.crdownload")
        os.rename(inbox / "e.jpeg.crdownload", inbox / "e.jpeg")

        expected = {"a.jpeg", "b.png", "c.dcm", "e.jpeg"}
        helpers.wait_for(lambda: expected <= set(_images(settings)), WAIT, message=f"rows for {expected}")
        time.sleep(2 * (settings.quiet_period + settings.max_batch_wait))  # room for any stray work

    images = _images(settings)
    assert set(images) == expected
    assert {n: r["kind"] for n, r in images.items()} == {"a.jpeg": "jpeg", "b.png": "png", "c.dcm": "dicom",
                                                          "e.jpeg": "jpeg"}
    assert all(r["status"] == "done" for r in images.values())
    assert images["c.dcm"]["sop_instance_uid"] and images["c.dcm"]["patient_ref"]
    rows = _rows(settings, "SELECT p.probability, p.model_version FROM predictions p")
    assert len(rows) == 4
    assert all(0.0 <= r["probability"] <= 1.0 and r["model_version"] == "tiny-test-1" for r in rows)
    assert classify.seen() == expected  # each file dispatched, ignored ones never
    assert len(classify.results) == 4  # and each once
    assert (inbox / "d.jpeg.part").exists() and (inbox / "a.jpeg").exists()  # the inbox is left alone


def test_slowly_written_file_is_classified_once_complete(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                         settings: Any) -> None:
    data = xrays.jpeg_bytes(xrays.PNEUMONIA_IMAGES[2])
    chunks = [data[i * len(data) // 4:(i + 1) * len(data) // 4] for i in range(4)]
    assert b"".join(chunks) == data
    target = inbox / "slow.jpeg"
    with running_watcher(inbox, tiny_bundle, sessions, settings, quiet_period=1.0):
        for i, chunk in enumerate(chunks):
            with target.open("ab") as fh:  # reopen, append, close: a close event after every chunk
                fh.write(chunk)
            if i < len(chunks) - 1:
                time.sleep(0.4)
                assert "slow.jpeg" not in _images(settings), f"classified after chunk {i + 1} of 4"
        helpers.wait_for(lambda: "slow.jpeg" in _images(settings), WAIT, message="a row for slow.jpeg")

    rows = _rows(settings, "SELECT * FROM images")
    assert len(rows) == 1, [dict(r) for r in rows]  # no row for any partial state
    (row,) = rows
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["byte_size"] == len(data)
    assert row["status"] == "done"
    assert _predictions(settings) == 1


def test_a_file_written_slower_than_the_quiet_period_ends_as_one_row(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                                      settings: Any) -> None:
    """Each pause outlasts the quiet period, so partial versions are read and rejected as truncated; the
    complete file supersedes them: one row, done, not seven rejected ones beside it (issue 27)."""
    data = xrays.png_bytes(xrays.PNEUMONIA_IMAGES[2])
    chunks = [data[i * len(data) // 4:(i + 1) * len(data) // 4] for i in range(4)]
    target = inbox / "slow.png"
    with running_watcher(inbox, tiny_bundle, sessions, settings, quiet_period=0.2, submit_when_idle=True) as (_, seen):
        for i, chunk in enumerate(chunks):
            with target.open("ab") as fh:
                fh.write(chunk)
            if i < len(chunks) - 1:
                helpers.wait_for(lambda n=i + 1: len(seen.results) >= n, WAIT, message=f"partial version {i + 1}")
        helpers.wait_for(lambda: any(r.status == "done" for r in seen.results), WAIT, message="the whole file")
    assert [r.status for r in seen.results][:3] == ["rejected"] * 3  # the partial versions were read
    rows = _rows(settings, "SELECT * FROM images")
    assert [(r["path"], r["status"]) for r in rows] == [(str(target), "done")], [dict(r) for r in rows]
    assert rows[0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_restarting_classifies_nothing_twice(inbox: Path, tiny_bundle: Any, sessions: Any, settings: Any) -> None:
    names = {"a.jpeg", "b.png", "c.dcm"}
    xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "a.jpeg")  # already there at start
    with running_watcher(inbox, tiny_bundle, sessions, settings) as (_, first):
        xrays.write_png(xrays.NORMAL_IMAGES[1], inbox / "b.png")
        dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[0], inbox / "c.dcm")
        helpers.wait_for(lambda: first.seen() == names, WAIT, message="first watcher to classify all")
    assert {r.status for r in first.results} == {"done"}
    predictions = _predictions(settings)
    created = _rows(settings, "SELECT id, created_at FROM predictions ORDER BY id")
    assert predictions == 3

    with running_watcher(inbox, tiny_bundle, sessions, settings) as (_, second):
        # The start-up scan hands every file over again; the pipeline must recognise them all.
        helpers.wait_for(lambda: second.seen() == names, WAIT, message="second watcher to catch up")
    assert len(second.results) == 3
    assert {r.status for r in second.results} == {"skipped"}
    assert _predictions(settings) == predictions
    assert _rows(settings, "SELECT id, created_at FROM predictions ORDER BY id") == created


def test_stop_flushes_the_batch_in_hand(inbox: Path, tiny_bundle: Any, sessions: Any, settings: Any) -> None:
    # A long max_wait: the only way the file is classified quickly is the flush on stop.
    from pneumoscan.config import Settings

    slow_batches = Settings(**{**settings.model_dump(), "max_batch_wait": 3600.0})
    xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "a.jpeg")
    with running_watcher(inbox, tiny_bundle, sessions, slow_batches) as (_, classify):
        time.sleep(1.0)
        assert classify.results == []  # waiting for company
    assert classify.seen() == {"a.jpeg"}
    assert _predictions(settings) == 1


def test_embedded_mode_classifies_a_lone_file_without_waiting_for_company(inbox: Path, tiny_bundle: Any,
                                                                         sessions: Any, settings: Any) -> None:
    # An hour of max_batch_wait: only submitting while the pipeline is idle gets the file through.
    from pneumoscan.config import Settings

    slow_batches = Settings(**{**settings.model_dump(), "max_batch_wait": 3600.0})
    with running_watcher(inbox, tiny_bundle, sessions, slow_batches, quiet_period=0.5,
                         submit_when_idle=True) as (_, classify):
        xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "a.jpeg")
        helpers.wait_for(lambda: "a.jpeg" in _images(settings), WAIT, message="a row for the lone file")
        time.sleep(0.5)
        xrays.write_png(xrays.NORMAL_IMAGES[1], inbox / "b.png")  # and the next one, just as promptly
        helpers.wait_for(lambda: "b.png" in _images(settings), WAIT, message="a row for the second file")
    assert [r.status for r in classify.results] == ["done", "done"]
    assert _predictions(settings) == 2


def test_a_complete_jpeg_renamed_in_is_classified_well_before_the_quiet_period(
        inbox: Path, tiny_bundle: Any, sessions: Any, settings: Any) -> None:
    data = xrays.jpeg_bytes(xrays.PNEUMONIA_IMAGES[0])
    staging = inbox / ".incoming"
    staging.mkdir()
    quiet = 60.0  # longer than the test may run: only the rename can mark these files complete
    with running_watcher(inbox, tiny_bundle, sessions, settings, quiet_period=quiet,
                         submit_when_idle=True) as (_, classify):
        (staging / "whole.jpeg").write_bytes(data)
        (staging / "cut.jpeg").write_bytes(data[: len(data) // 2])  # renamed before the writer was done
        (staging / "scan.dcm").write_bytes(dicoms.dicom_bytes(xrays.NORMAL_IMAGES[0]))  # no end marker
        for name in ("cut.jpeg", "scan.dcm", "whole.jpeg"):
            os.rename(staging / name, inbox / name)
        helpers.wait_for(lambda: "whole.jpeg" in _images(settings), WAIT, message="a row for the renamed-in JPEG")
        time.sleep(1.0)  # room for the others to be (wrongly) handed over too
        assert classify.seen() == {"whole.jpeg"}
    # Stopping does not hand over what is not known to be complete; the next start's scan will.
    assert set(_images(settings)) == {"whole.jpeg"}
    assert _images(settings)["whole.jpeg"]["status"] == "done"


def test_a_failing_dispatch_is_retried_without_stopping_the_watch(
    inbox: Path, tiny_bundle: Any, sessions: Any, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    real = partial(classify_paths, bundle=tiny_bundle, sessions=sessions, settings=settings)
    calls: list[list[str]] = []

    def flaky(paths: Sequence[str]) -> list[Result]:
        calls.append(list(paths))
        if len(calls) == 1:
            raise OSError("database is locked")
        return real(paths)

    batcher = MicroBatcher(InlineDispatcher(flaky), settings.batch_size, settings.max_batch_wait)
    watcher = Watcher(inbox, batcher, settings.quiet_period, poll_interval=0.05)
    thread = threading.Thread(target=watcher.run, name="test-watcher", daemon=True)
    thread.start()
    try:
        assert watcher.started.wait(WAIT)
        xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "a.jpeg")
        helpers.wait_for(lambda: "a.jpeg" in _images(settings), WAIT, message="the retry to classify a.jpeg")
        assert thread.is_alive()
    finally:
        watcher.stop()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert len(calls) == 2 and calls[0] == calls[1] == [str(inbox / "a.jpeg")]  # same batch, retried once
    assert _predictions(settings) == 1
    assert any("dispatch failed" in r.getMessage() and "database is locked" in r.getMessage()
               for r in caplog.records)


def test_stop_returns_even_when_the_last_flush_fails(inbox: Path, settings: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def broken(paths: Sequence[str]) -> list[Result]:
        raise OSError("disk full")

    # max_wait of an hour: the file is only ever sent by the flush on stop.
    watcher = Watcher(inbox, MicroBatcher(InlineDispatcher(broken), 8, 3600.0), 0.0, poll_interval=0.05)
    xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "a.jpeg")
    thread = threading.Thread(target=watcher.run, name="test-watcher", daemon=True)
    thread.start()
    assert watcher.started.wait(WAIT)
    time.sleep(0.5)
    watcher.stop()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert any("could not classify 1 files before stopping" in r.getMessage() for r in caplog.records)
    assert (inbox / "a.jpeg").exists()


def test_run_on_a_missing_folder_raises(tmp_path: Path, tiny_bundle: Any, sessions: Any, settings: Any) -> None:
    classify = partial(classify_paths, bundle=tiny_bundle, sessions=sessions, settings=settings)
    watcher = Watcher(tmp_path / "nope", MicroBatcher(InlineDispatcher(classify), 8, 0.3), 0.5)
    with pytest.raises(NotADirectoryError, match="not a folder"):
        watcher.run()


def test_a_link_dropped_into_the_inbox_is_rejected_and_never_followed(tmp_path: Path, inbox: Path, tiny_bundle: Any,
                                                                      sessions: Any, settings: Any) -> None:
    outside = xrays.write_jpeg(xrays.PNEUMONIA_IMAGES[2], tmp_path / "elsewhere" / "private.jpeg")
    with running_watcher(inbox, tiny_bundle, sessions, settings):
        (inbox / "link.jpeg").symlink_to(outside)
        xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "real.jpeg")
        helpers.wait_for(lambda: {"link.jpeg", "real.jpeg"} <= set(_images(settings)), WAIT, message="both rows")
    images = _images(settings)
    assert images["real.jpeg"]["status"] == "done"
    assert (images["link.jpeg"]["status"], images["link.jpeg"]["sha256"]) == ("rejected", None)
    assert images["link.jpeg"]["reason"].startswith("symbolic link: not followed")
    private = hashlib.sha256(outside.read_bytes()).hexdigest()
    assert not _rows(settings, "SELECT * FROM images WHERE sha256 = ?", private)
