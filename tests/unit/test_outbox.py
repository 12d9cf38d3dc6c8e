"""The outbox on a real SQLite database: recorded before publishing, settled with the result, stale when lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from support import xrays

from pneumoscan.db import outbox
from pneumoscan.db.schema import QueuedFile
from pneumoscan.pipeline import classify_paths

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_a_lost_file_becomes_stale_after_the_bound_and_a_claimed_one_counts_from_its_claim(sessions: Any) -> None:
    with sessions.begin() as session:
        outbox.record(session, ["/in/a.png", "/in/b.png", "/in/c.png"], now=T0)
        outbox.claim(session, ["/in/b.png"], now=T0 + timedelta(seconds=50))
    with sessions() as session:
        assert outbox.stale(session, 60, now=T0 + timedelta(seconds=30)) == []
        assert outbox.stale(session, 60, now=T0 + timedelta(seconds=61)) == ["/in/a.png", "/in/c.png"]
        assert outbox.stale(session, 60, now=T0 + timedelta(seconds=111)) == ["/in/a.png", "/in/b.png", "/in/c.png"]
        # While the broker still holds messages, a file nobody claimed may be waiting its turn.
        assert outbox.stale(session, 60, claimed_only=True, now=T0 + timedelta(seconds=111)) == ["/in/b.png"]
        assert outbox.pending_count(session)[0] == 3


def test_sending_again_counts_an_attempt_and_restarts_the_clock(sessions: Any) -> None:
    with sessions.begin() as session:
        outbox.record(session, ["/in/a.png"], now=T0)
        outbox.claim(session, ["/in/a.png"], now=T0)
        outbox.record(session, ["/in/a.png", "/in/a.png"], now=T0 + timedelta(seconds=90))
    with sessions() as session:
        (row,) = session.query(QueuedFile).all()
        assert (row.attempts, row.claimed_at) == (2, None)
        assert outbox.stale(session, 60, now=T0 + timedelta(seconds=100)) == []


def test_the_pipeline_settles_handed_over_files_in_the_transaction_that_stores_them(
        tmp_path: Path, sessions: Any, settings: Any, tiny_bundle: Any) -> None:
    good = xrays.distinct_pngs(tmp_path / "in", 3)
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    waiting = tmp_path / "in" / "not-yet.png"
    paths = [str(p) for p in [*good, bad]]
    with sessions.begin() as session:
        outbox.record(session, [*paths, str(waiting)])
    results = classify_paths(paths, bundle=tiny_bundle, sessions=sessions, settings=settings)
    assert {r.status for r in results} == {"done", "rejected"}
    with sessions() as session:
        assert [row.path for row in session.query(QueuedFile)] == [str(waiting)]
