"""Watching: watchdog events and a start-up catch-up scan feed a readiness check (quiet period)."""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from pneumoscan.imaging import detect_kind, looks_complete
from pneumoscan.inputs import is_ignored, iter_files, open_input
from pneumoscan.scheduler.batcher import MicroBatcher

log = logging.getLogger(__name__)

_DISPATCHED_MEMORY = 50_000


@dataclass(frozen=True)
class ScanEvent:
    """A file that changed or was found by a scan; ``closed`` when its writer says it is done with it.

    A writer says so by closing the file after writing, or by renaming it into place (the usual way
    to publish a finished file: download managers, rsync, ``mv`` from a staging folder).
    """

    path: str
    closed: bool = False


@dataclass
class _Pending:
    snapshot: tuple[int, int]  # size, mtime_ns
    since: float  # monotonic time the snapshot was first seen
    closed: bool = False


class ReadinessTracker:
    """Decides when a file is complete: unchanged size and mtime for ``quiet_period`` seconds.

    A close-after-write or renamed-into-place event shortens the wait when the file also ends with
    its format's end marker (JPEG EOI, PNG IEND). Writers that close between chunks, or rename a file
    they are still writing, stay covered by the quiet period, and so does DICOM (no end marker).
    """

    def __init__(self, quiet_period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._quiet = quiet_period
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        # Recently handed-over files, to ignore late events for the same bytes; bounded (LRU) because
        # the pipeline's content dedupe is the real guarantee and a long watch sees millions of files.
        self._dispatched: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def observe(self, event: ScanEvent) -> None:
        """Note that ``event.path`` may have changed."""
        snapshot = _stat(event.path)
        if snapshot is None:
            self._pending.pop(event.path, None)
            return
        if self._dispatched.get(event.path) == snapshot:
            return  # already handed over with exactly this size and mtime
        now = self._clock()
        entry = self._pending.get(event.path)
        if entry is None:
            # A file found already at rest (catch-up scan) needs no fresh quiet period.
            age = max(0.0, time.time() - snapshot[1] / 1e9)
            entry = self._pending[event.path] = _Pending(snapshot, now - min(age, self._quiet))
        elif entry.snapshot != snapshot:
            entry.snapshot, entry.since, entry.closed = snapshot, now, False
        entry.closed = entry.closed or event.closed

    def ready(self) -> list[str]:
        """Paths that are complete now; they are removed from tracking."""
        now = self._clock()
        done: list[str] = []
        for path, entry in list(self._pending.items()):
            snapshot = _stat(path)
            if snapshot is None:
                del self._pending[path]
            elif snapshot != entry.snapshot:
                entry.snapshot, entry.since, entry.closed = snapshot, now, False
            elif now - entry.since >= self._quiet or (entry.closed and _ends_cleanly(path)):
                del self._pending[path]
                self._dispatched[path] = snapshot
                self._dispatched.move_to_end(path)
                if len(self._dispatched) > _DISPATCHED_MEMORY:
                    self._dispatched.popitem(last=False)
                done.append(path)
        return done


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if st.st_size >= 0 else None


def _ends_cleanly(path: str) -> bool:
    try:
        with open_input(path) as fh:  # never through a link: its target may lie outside the inbox
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return False
            head = fh.read(132)
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 16))
            tail = fh.read()
    except OSError:
        return False
    return looks_complete(detect_kind(head), tail)


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, events: queue.SimpleQueue[ScanEvent]) -> None:
        self._root = root
        self._events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if event.event_type in ("created", "moved"):  # a folder moved in brings files with it
                target = Path(os.fsdecode(getattr(event, "dest_path", "") or event.src_path))
                for path in iter_files(target) if target.is_dir() and not target.is_symlink() else ():
                    self._events.put(ScanEvent(str(path)))
            return
        raw = event.dest_path if event.event_type == "moved" else event.src_path
        path = Path(os.fsdecode(raw))
        if event.event_type in ("created", "modified", "moved", "closed") and not is_ignored(path, self._root):
            # A rename within the watched tree (from a hidden staging folder, or from `.part`) publishes
            # a finished file as surely as a close does. A rename from outside the inbox arrives as
            # "created", indistinguishable from a file just opened for writing, so it keeps the wait.
            self._events.put(ScanEvent(str(path), closed=event.event_type in ("closed", "moved")))


class Watcher:
    """Catch up on files already in ``inbox``, then watch it and submit complete files in batches.

    ``run`` blocks until ``stop`` is called (from a signal handler or another thread); it then
    submits the batch in hand and returns.
    """

    def __init__(self, inbox: Path, batcher: MicroBatcher, quiet_period: float, *,
                 poll_interval: float = 0.2) -> None:
        self.inbox = inbox.resolve()
        self._batcher = batcher
        self._tracker = ReadinessTracker(quiet_period)
        self._events: queue.SimpleQueue[ScanEvent] = queue.SimpleQueue()
        self._poll = poll_interval
        self._stop = threading.Event()
        self._failures = 0
        self._retry_at = 0.0
        self.started = threading.Event()

    def stop(self) -> None:
        """Ask ``run`` to finish; safe from signal handlers."""
        self._stop.set()

    def run(self) -> None:
        """Watch until stopped."""
        if not self.inbox.is_dir():
            raise NotADirectoryError(f"inbox {self.inbox} is not a folder")
        observer = Observer()
        observer.schedule(_Handler(self.inbox, self._events), str(self.inbox), recursive=True)
        observer.start()  # before the scan, so nothing written during the scan is missed
        try:
            found = 0
            for path in iter_files(self.inbox):
                self._tracker.observe(ScanEvent(str(path)))
                found += 1
            log.info("watching %s (%d files found at start)", self.inbox, found)
            self.started.set()
            while not self._stop.is_set():
                self._step()
                self._stop.wait(self._poll)
            self._step()
            try:
                self._batcher.flush()
            except Exception as exc:
                log.error("could not classify %d files before stopping (%s); the next start picks them up",
                          len(self._batcher), exc)
        finally:
            observer.stop()
            observer.join(timeout=5)

    def _step(self) -> None:
        while True:
            try:
                self._tracker.observe(self._events.get_nowait())
            except queue.Empty:
                break
        self._batcher.add(self._tracker.ready())
        if time.monotonic() < self._retry_at:
            return
        try:
            self._batcher.submit_due()
        except Exception as exc:  # the batcher keeps the paths; try again after a pause
            self._failures += 1
            delay = min(60.0, 2.0 ** self._failures)
            self._retry_at = time.monotonic() + delay
            log.error("dispatch failed (%s: %s); %d files kept, retrying in %.0f s",
                      type(exc).__name__, exc, len(self._batcher), delay)
        else:
            self._failures = 0
