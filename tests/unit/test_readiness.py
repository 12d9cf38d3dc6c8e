"""Scheduler watching: the ignore rule, the catch-up file listing and the quiet-period readiness check."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support import dicoms, xrays

from pneumoscan.inputs import is_ignored, iter_files
from pneumoscan.scheduler.watcher import ReadinessTracker, ScanEvent

ROOT = Path("/inbox")


@pytest.mark.parametrize(
    "relative",
    [
        ".hidden.jpg",
        ".DS_Store",
        ".cache/a.jpg",
        "sub/.git/objects/a.jpeg",
        "scan.jpg.part",
        "scan.JPG.PART",
        "scan.dcm.tmp",
        "scan.TMP",
        "scan.png.crdownload",
        "scan.partial",
        ".scan.jpg.swp",
        "scan.jpg~",
        "sub/scan.dcm~",
    ],
)
def test_ignored(relative: str) -> None:
    assert is_ignored(ROOT / relative, ROOT)


@pytest.mark.parametrize(
    "relative",
    ["scan.jpg", "IM-0001-0001.jpeg", "sub/deeper/study.dcm", "no_suffix", "a.part.jpg", "tmp/scan.png",
     "x.tmp.png", "person1_virus_6.jpeg"],
)
def test_not_ignored(relative: str) -> None:
    assert not is_ignored(ROOT / relative, ROOT)


def test_outside_the_root_or_the_root_itself_is_ignored() -> None:
    assert is_ignored(Path("/elsewhere/scan.jpg"), ROOT)
    assert is_ignored(ROOT, ROOT)


def test_iter_files_applies_the_rule(tmp_path: Path) -> None:
    for name in ("a.jpg", "sub/b.png", "sub/deeper/c.dcm", ".hidden.jpg", "d.jpg.part", "e.tmp", "f~",
                 ".git/g.jpg", "sub/.h/i.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = sorted(p.relative_to(tmp_path).as_posix() for p in iter_files(tmp_path))
    assert found == ["a.jpg", "sub/b.png", "sub/deeper/c.dcm"]


def test_iter_files_yields_links_unresolved_and_never_enters_a_linked_folder(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    for name in ("inbox/a.jpg", "outside/secret.jpg", "outside/deep/more.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (inbox / "file-link.jpg").symlink_to(outside / "secret.jpg")
    (inbox / "folder-link").symlink_to(outside, target_is_directory=True)
    (inbox / "dangling.jpg").symlink_to(tmp_path / "nowhere")
    (inbox / ".hidden-link").symlink_to(outside)
    found = sorted(p.relative_to(inbox).as_posix() for p in iter_files(inbox))
    assert found == ["a.jpg", "dangling.jpg", "file-link.jpg", "folder-link"]  # for the pipeline to reject


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def test_unchanged_file_is_ready_after_the_quiet_period(tmp_path: Path, clock: FakeClock) -> None:
    path = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], tmp_path / "a.jpeg")
    tracker = ReadinessTracker(1.0, clock=clock)
    tracker.observe(ScanEvent(str(path)))
    assert len(tracker) == 1
    clock.now = 0.5
    assert tracker.ready() == []
    clock.now = 1.5
    assert tracker.ready() == [str(path)]
    assert len(tracker) == 0
    clock.now = 10.0
    assert tracker.ready() == []  # handed over once


def test_a_file_that_keeps_changing_is_never_ready(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "growing.jpeg"
    path.write_bytes(b"\xff\xd8\xff")
    tracker = ReadinessTracker(1.0, clock=clock)
    tracker.observe(ScanEvent(str(path)))
    for step in range(1, 20):
        clock.now = step * 0.6  # more than half the quiet period between writes, never the whole of it
        _append(path, b"\x00" * 100)
        tracker.observe(ScanEvent(str(path)))
        assert tracker.ready() == [], f"ready while still being written (step {step})"
    # Once the writer stops, the quiet period counts from the last change.
    last_change = clock.now
    clock.now = last_change + 0.9
    assert tracker.ready() == []
    clock.now = last_change + 1.05
    assert tracker.ready() == [str(path)]


def test_a_change_seen_only_by_polling_restarts_the_quiet_period(tmp_path: Path, clock: FakeClock) -> None:
    # No event for the second write (events can be lost or coalesced): ready() itself must notice.
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    tracker = ReadinessTracker(1.0, clock=clock)
    tracker.observe(ScanEvent(str(path)))
    clock.now = 0.9
    _append(path, b"\x00" * 10)
    assert tracker.ready() == []
    clock.now = 1.5  # 1.5 s since the first sight, only 0.6 s since the change
    assert tracker.ready() == []
    clock.now = 2.0
    assert tracker.ready() == [str(path)]


def test_a_file_at_rest_at_start_up_is_ready_at_once(tmp_path: Path, clock: FakeClock) -> None:
    path = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], tmp_path / "old.jpeg")
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(an_hour_ago, an_hour_ago))
    tracker = ReadinessTracker(5.0, clock=clock)
    tracker.observe(ScanEvent(str(path)))
    assert tracker.ready() == [str(path)]


def test_close_write_of_a_complete_jpeg_is_ready_at_once(tmp_path: Path, clock: FakeClock) -> None:
    path = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], tmp_path / "a.jpeg")
    tracker = ReadinessTracker(60.0, clock=clock)
    tracker.observe(ScanEvent(str(path), closed=True))
    assert tracker.ready() == [str(path)]


def test_close_write_of_a_partial_jpeg_waits_for_the_quiet_period(tmp_path: Path, clock: FakeClock) -> None:
    data = xrays.jpeg_bytes(xrays.NORMAL_IMAGES[0])
    path = tmp_path / "a.jpeg"
    path.write_bytes(data[: len(data) // 2])  # the writer closed between chunks
    tracker = ReadinessTracker(1.0, clock=clock)
    tracker.observe(ScanEvent(str(path), closed=True))
    assert tracker.ready() == []
    clock.now = 0.5
    _append(path, data[len(data) // 2:])
    tracker.observe(ScanEvent(str(path)))  # a modify event: not closed yet
    assert tracker.ready() == []
    tracker.observe(ScanEvent(str(path), closed=True))
    assert tracker.ready() == [str(path)]


def test_close_write_of_a_dicom_still_waits(tmp_path: Path, clock: FakeClock) -> None:
    # DICOM has no end marker, so a close event alone proves nothing.
    path = dicoms.write_dicom(xrays.NORMAL_IMAGES[0], tmp_path / "a.dcm")
    tracker = ReadinessTracker(1.0, clock=clock)
    tracker.observe(ScanEvent(str(path), closed=True))
    assert tracker.ready() == []
    clock.now = 1.0
    assert tracker.ready() == [str(path)]


def test_a_vanished_file_is_dropped(tmp_path: Path, clock: FakeClock) -> None:
    path = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], tmp_path / "a.jpeg")
    tracker = ReadinessTracker(1.0, clock=clock)
    tracker.observe(ScanEvent(str(path)))
    path.unlink()
    clock.now = 5.0
    assert tracker.ready() == []
    assert len(tracker) == 0
    tracker.observe(ScanEvent(str(tmp_path / "never-existed.jpeg")))
    assert len(tracker) == 0


def test_a_file_rewritten_after_hand_over_is_handed_over_again(tmp_path: Path, clock: FakeClock) -> None:
    path = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], tmp_path / "a.jpeg")
    tracker = ReadinessTracker(1.0, clock=clock)
    tracker.observe(ScanEvent(str(path)))
    clock.now = 1.0
    assert tracker.ready() == [str(path)]
    # The same snapshot again (a duplicate event) is not new work ...
    tracker.observe(ScanEvent(str(path)))
    assert len(tracker) == 0
    # ... but new content is.
    xrays.write_jpeg(xrays.NORMAL_IMAGES[1], path)
    clock.now = 2.0
    tracker.observe(ScanEvent(str(path)))
    assert tracker.ready() == []
    clock.now = 3.0
    assert tracker.ready() == [str(path)]


def _handled(event: object, root: Path) -> list[ScanEvent]:
    import queue

    from pneumoscan.scheduler.watcher import _Handler

    events: queue.SimpleQueue[ScanEvent] = queue.SimpleQueue()
    _Handler(root, events).dispatch(event)  # type: ignore[arg-type]
    out = []
    while not events.empty():
        out.append(events.get_nowait())
    return out


def test_a_rename_into_place_counts_as_the_writer_being_done(tmp_path: Path) -> None:
    from watchdog.events import FileCreatedEvent, FileModifiedEvent, FileMovedEvent

    staged, final = tmp_path / ".incoming" / "a.jpeg", tmp_path / "a.jpeg"
    assert _handled(FileMovedEvent(str(staged), str(final)), tmp_path) == [ScanEvent(str(final), closed=True)]
    part = tmp_path / "b.jpeg.part"
    assert _handled(FileMovedEvent(str(part), str(tmp_path / "b.jpeg")), tmp_path) == [
        ScanEvent(str(tmp_path / "b.jpeg"), closed=True)]
    # Created and modified say nothing about the writer being done; a rename out of sight is ignored.
    assert _handled(FileCreatedEvent(str(final)), tmp_path) == [ScanEvent(str(final))]
    assert _handled(FileModifiedEvent(str(final)), tmp_path) == [ScanEvent(str(final))]
    assert _handled(FileMovedEvent(str(final), str(tmp_path / "c.jpeg.tmp")), tmp_path) == []


def test_a_complete_jpeg_renamed_in_with_a_fresh_mtime_is_ready_at_once(tmp_path: Path, clock: FakeClock) -> None:
    staged = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], tmp_path / ".incoming" / "a.jpeg")
    path = tmp_path / "a.jpeg"
    os.rename(staged, path)
    tracker = ReadinessTracker(60.0, clock=clock)
    tracker.observe(ScanEvent(str(path), closed=True))
    assert tracker.ready() == [str(path)]


def test_a_truncated_jpeg_renamed_in_waits_for_the_quiet_period(tmp_path: Path, clock: FakeClock) -> None:
    data = xrays.jpeg_bytes(xrays.NORMAL_IMAGES[0])
    staged = tmp_path / ".incoming" / "a.jpeg"
    staged.parent.mkdir()
    staged.write_bytes(data[: len(data) * 2 // 3])  # renamed before the writer finished
    path = tmp_path / "a.jpeg"
    os.rename(staged, path)
    tracker = ReadinessTracker(1.0, clock=clock)
    tracker.observe(ScanEvent(str(path), closed=True))
    assert tracker.ready() == []
    clock.now = 0.5
    assert tracker.ready() == []
    clock.now = 1.0  # still truncated: handed over for the pipeline to reject with its reason
    assert tracker.ready() == [str(path)]


def test_a_dicom_renamed_in_still_waits(tmp_path: Path, clock: FakeClock) -> None:
    staged = dicoms.write_dicom(xrays.NORMAL_IMAGES[0], tmp_path / ".incoming" / "a.dcm")
    path = tmp_path / "a.dcm"
    os.rename(staged, path)
    tracker = ReadinessTracker(1.0, clock=clock)
    tracker.observe(ScanEvent(str(path), closed=True))
    assert tracker.ready() == []
    clock.now = 1.0
    assert tracker.ready() == [str(path)]
