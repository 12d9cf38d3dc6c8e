"""Latency of embedded `pneumoscan watch` at a low arrival rate: file complete -> row committed, p50 and p95.

python -m bench.latency [--files 60] [--interval 1.0] [--modes rename,rename-old-mtime,write,rename-outside]
                        [--max-batch-wait S] [--quiet-period S] [--bundle DIR | --stand-in]

A `pneumoscan watch INBOX` child runs with a fresh SQLite database. After a warm-up file (model
load and first trace, not counted), full-size JPEGs arrive one every --interval seconds. How a file
becomes complete matters, because the watcher only hands over files it knows are complete:

  rename            written under INBOX/.incoming/ (hidden: ignored) and renamed into the inbox, with
                    a fresh mtime. The watcher sees a `moved` event, which (with the JPEG end
                    marker) marks the file complete at once, like a close after writing.
  rename-old-mtime  the same, with the source's older mtime kept (as `cp -p`, `rsync -t`, most
                    transfer tools do). The file is already at rest, so no quiet period is needed.
  write             written in place with open/write/close. The close-after-write event plus the
                    JPEG end marker mark it complete at once.
  rename-outside    written in a folder beside the inbox (not watched) and renamed in, with a fresh
                    mtime. The watcher sees only `created`, which cannot be told from a file just
                    opened for writing, so it waits for the quiet period (size and mtime unchanged).

"complete" is the moment the rename (or close) returned. "committed" is when a reader polling the
database every --poll seconds first sees the prediction row; the prediction's created_at (set just
before the batch's commit) is recorded too, as a lower bound. Target: p95 <= max_batch_wait + 1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common
from bench.make_inputs import cached_inputs

MODES = ("rename", "rename-old-mtime", "write", "rename-outside")


class RowWatcher:
    """Polls the SQLite file for new prediction rows and notes when each path's row first became visible."""

    def __init__(self, db_path: Path, poll: float) -> None:
        self._db_path = db_path
        self._poll = poll
        self.seen: dict[str, tuple[float, float]] = {}  # path -> (time seen, created_at)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RowWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True)
        last = 0
        try:
            while not self._stop.is_set():
                rows = db.execute("SELECT p.id, i.path, p.created_at FROM predictions p JOIN images i "
                                  "ON i.id = p.image_id WHERE p.id > ? ORDER BY p.id", (last,)).fetchall()
                seen_at = time.time()
                for row_id, path, created in rows:
                    created_dt = datetime.fromisoformat(created)
                    if created_dt.tzinfo is None:
                        created_dt = created_dt.replace(tzinfo=UTC)
                    self.seen.setdefault(path, (seen_at, created_dt.timestamp()))
                    last = max(last, row_id)
                self._stop.wait(self._poll)
        finally:
            db.close()


def deliver(source: Path, inbox: Path, name: str, mode: str) -> tuple[str, float]:
    """Put ``source``'s bytes into the inbox as ``name`` the way ``mode`` says; (final path, time complete)."""
    data = source.read_bytes()
    dest = inbox / name
    if mode == "write":
        with dest.open("wb") as fh:
            fh.write(data)
        return str(dest), time.time()
    staging = (inbox.parent / "outside" if mode == "rename-outside" else inbox / ".incoming") / name
    with staging.open("wb") as fh:
        fh.write(data)
    if mode == "rename-old-mtime":
        old = time.time() - 3600
        os.utime(staging, (old, old))
    os.rename(staging, dest)
    return str(dest), time.time()


def run_mode(mode: str, sources: list[Path], args: argparse.Namespace, bundle_path: Path) -> dict[str, Any]:
    root = args.work / "latency" / mode
    shutil.rmtree(root, ignore_errors=True)
    inbox, data = root / "inbox", root / "data"
    (inbox / ".incoming").mkdir(parents=True)
    (root / "outside").mkdir()
    env = common.pneumoscan_env(data, bundle_path, PNEUMOSCAN_MAX_BATCH_WAIT=str(args.max_batch_wait),
                                PNEUMOSCAN_QUIET_PERIOD=str(args.quiet_period),
                                PNEUMOSCAN_BATCH_SIZE=str(args.batch_size))
    log_path = root / "watch.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(common.PNEUMOSCAN_EXE), "-v", "watch", str(inbox)], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        common.wait_for(lambda: "watching" in log_path.read_text() or proc.poll() is not None, 120,
                        what="`pneumoscan watch` to start")
        if proc.poll() is not None:
            raise RuntimeError(f"watch exited:\n{log_path.read_text()[-3000:]}")
        with RowWatcher(data / "pneumoscan.db", args.poll) as rows:
            warm, _ = deliver(sources[0], inbox, "warmup.jpeg", "rename-old-mtime")
            common.wait_for(lambda: warm in rows.seen, 180, what="the warm-up file's row")
            complete: dict[str, float] = {}
            next_at = time.time()
            for i, source in enumerate(sources[1:], start=1):
                time.sleep(max(0.0, next_at - time.time()))
                path, at = deliver(source, inbox, f"arrival-{i:04d}.jpeg", mode)
                complete[path] = at
                next_at += args.interval
            common.wait_for(lambda: all(p in rows.seen for p in complete), 60 + 3 * args.quiet_period,
                            what="every file's row")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    visible = [rows.seen[p][0] - t for p, t in complete.items()]
    created = [rows.seen[p][1] - t for p, t in complete.items()]
    return {
        "mode": mode, "files": len(complete),
        "p50_s": common.percentile(visible, 50), "p95_s": common.percentile(visible, 95), "max_s": max(visible),
        "created_at_p50_s": common.percentile(created, 50), "created_at_p95_s": common.percentile(created, 95),
        "latencies_s": [round(v, 3) for v in visible],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=60, help="arrivals per mode (after one warm-up file)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between arrivals")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--max-batch-wait", type=float, default=None, help="[default: the Settings default]")
    parser.add_argument("--quiet-period", type=float, default=None, help="[default: the Settings default]")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: the Settings default]")
    parser.add_argument("--poll", type=float, default=0.05, help="database polling interval, seconds")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    common.add_bundle_args(parser)
    common.add_output_arg(parser, "latency")
    args = parser.parse_args()

    from pneumoscan.config import Settings

    defaults = Settings(data_dir=args.work / "unused")
    args.max_batch_wait = defaults.max_batch_wait if args.max_batch_wait is None else args.max_batch_wait
    args.quiet_period = defaults.quiet_period if args.quiet_period is None else args.quiet_period
    args.batch_size = args.batch_size or defaults.batch_size
    bundle_path, bundle = common.resolve_bundle(args, args.work)
    info = common.machine()
    print(common.describe_machine(info))
    target = args.max_batch_wait + 1.0
    print(f"bundle {bundle['version']}; max_batch_wait {args.max_batch_wait} s, quiet_period {args.quiet_period} s, "
          f"batch {args.batch_size}; one file every {args.interval} s; target p95 <= {target:.1f} s")
    sources = cached_inputs("jpeg", args.files + 1, args.work)
    results = []
    for mode in args.modes.split(","):
        result = run_mode(mode, sources, args, bundle_path)
        result["meets_target"] = result["p95_s"] <= target
        results.append(result)
        print(f"{mode:<17} p50 {result['p50_s']:5.2f} s  p95 {result['p95_s']:5.2f} s  max {result['max_s']:5.2f} s"
              f"  ({result['files']} files; created_at p95 {result['created_at_p95_s']:.2f} s)  "
              f"{'meets' if result['meets_target'] else 'MISSES'} target", flush=True)
    payload = {"machine": info, "bundle": bundle, "max_batch_wait_s": args.max_batch_wait,
               "quiet_period_s": args.quiet_period, "batch_size": args.batch_size, "interval_s": args.interval,
               "target_p95_s": target, "results": results, "preliminary": common.preliminary(info, bundle)}
    common.write_result("latency", payload, args.out)


if __name__ == "__main__":
    main()
