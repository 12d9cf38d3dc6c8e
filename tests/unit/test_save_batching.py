"""save_results writes a batch in a fixed number of statements, whatever its size."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from pneumoscan.db import open_database
from pneumoscan.db.writes import save_results
from pneumoscan.domain import Result


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[Any, list[str], Path]]:
    path = tmp_path / "results.db"
    sessions = open_database(f"sqlite:///{path}")
    engine = sessions.engine
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _conn, _cursor, statement, *_rest: statements.append(statement.split()[0].upper()))
    yield sessions, statements, path
    engine.dispose()


def _done(i: int, prefix: str = "/inbox") -> Result:
    return Result(f"{prefix}/{i}.jpeg", "done", sha256=hashlib.sha256(str(i).encode()).hexdigest(), kind="jpeg",
                  byte_size=1000 + i, probability=i / 1000, label="NORMAL", threshold=0.5, model_version="v1")


@pytest.mark.parametrize("n", [1, 32, 700])
def test_a_batch_is_a_handful_of_statements(database: tuple[Any, list[str], Path], n: int) -> None:
    sessions, statements, path = database
    statements.clear()
    with sessions.begin() as session:
        save_results(session, [_done(i) for i in range(n)])
    writes = [s for s in statements if s in ("INSERT", "UPDATE", "DELETE")]
    chunks = -(-n // 500)
    assert len(writes) == 1 + 3 * chunks  # placeholder delete, image upserts, prediction inserts, sightings
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM images").fetchone() == (n,)
        assert connection.execute("SELECT count(*), sum(probability) FROM predictions").fetchone() == (
            n, pytest.approx(sum(i / 1000 for i in range(n))))


def test_skipped_results_move_their_images_in_one_statement(database: tuple[Any, list[str], Path]) -> None:
    sessions, statements, path = database
    with sessions.begin() as session:
        save_results(session, [_done(i) for i in range(40)])
    moved = [Result(f"/moved/{i}.jpeg", "skipped", sha256=_done(i).sha256) for i in range(40)]
    statements.clear()
    with sessions.begin() as session:
        save_results(session, moved)
    # One executemany moves the images, one statement records the new sightings.
    assert [s for s in statements if s in ("INSERT", "UPDATE", "DELETE")] == ["UPDATE", "INSERT"]
    with sqlite3.connect(path) as connection:
        paths = sorted(p for (p,) in connection.execute("SELECT path FROM images"))
        assert paths == sorted(r.path for r in moved)
        assert connection.execute("SELECT count(*) FROM predictions").fetchone() == (40,)
        assert connection.execute("SELECT count(*) FROM sightings").fetchone() == (80,)  # old and new paths


def test_one_content_twice_in_a_batch_keeps_the_last_path(database: tuple[Any, list[str], Path]) -> None:
    sessions, _statements, path = database
    first, again = _done(1, "/a"), _done(1, "/b")
    with sessions.begin() as session:
        save_results(session, [first, again, Result("/c/1.jpeg", "skipped", sha256=first.sha256)])
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT path FROM images").fetchall() == [("/c/1.jpeg",)]
        assert connection.execute("SELECT count(*) FROM predictions").fetchone() == (1,)
