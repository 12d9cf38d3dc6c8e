"""A file read while still being written leaves rejected partial versions; a later version of its path removes them."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pneumoscan.db import open_database
from pneumoscan.db.writes import save_results
from pneumoscan.domain import Label, Outcome, Result


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    path = tmp_path / "results.db"
    sessions = open_database(f"sqlite:///{path}")
    yield sessions, path
    sessions.dispose()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _partial(path: str, n: int) -> Result:
    return Result(path, Outcome.REJECTED, sha256=_sha(f"{path} part {n}"), kind="png", byte_size=100 * n,
                  reason="corrupt or truncated PNG: image file is truncated")


def _done(path: str, content: str = "whole") -> Result:
    return Result(path, Outcome.DONE, sha256=_sha(f"{path} {content}"), kind="png", byte_size=1000,
                  probability=0.2, label=Label.NORMAL, threshold=0.5, model_version="v1")


def _rows(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT i.path, i.status FROM images i ORDER BY i.id").fetchall()


def _save(sessions: Any, *results: Result) -> None:
    with sessions.begin() as session:
        save_results(session, list(results))


def test_partial_versions_written_in_chunks_go_when_the_whole_file_is_stored(database: tuple[Any, Path]) -> None:
    sessions, path = database
    for n in range(1, 8):  # seven reads of a file still being written, one batch each
        _save(sessions, _partial("/inbox/slow.png", n))
    _save(sessions, _done("/inbox/slow.png"))
    assert _rows(path) == [("/inbox/slow.png", "done")]
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM sightings").fetchone() == (1,)


def test_a_later_partial_version_replaces_an_earlier_one(database: tuple[Any, Path]) -> None:
    sessions, path = database
    _save(sessions, _partial("/inbox/a.png", 1))
    _save(sessions, _partial("/inbox/a.png", 2))
    assert _rows(path) == [("/inbox/a.png", "rejected")]


def test_what_was_seen_elsewhere_predicted_or_of_another_path_stays(database: tuple[Any, Path]) -> None:
    sessions, path = database
    shared = _partial("/inbox/b.png", 1)
    _save(sessions, shared, Result("/inbox/copy-of-b.png", Outcome.REJECTED, sha256=shared.sha256, kind="png",
                                   byte_size=100, reason=shared.reason))
    _save(sessions, _partial("/inbox/other.png", 1))
    _save(sessions, _done("/inbox/earlier.png", "first"))
    _save(sessions, _done("/inbox/b.png"), _done("/inbox/earlier.png", "second"))
    assert sorted(_rows(path)) == sorted([
        ("/inbox/copy-of-b.png", "rejected"),  # its content is still at another path
        ("/inbox/other.png", "rejected"),  # another path
        ("/inbox/earlier.png", "done"),  # a classified earlier version: its prediction is history
        ("/inbox/b.png", "done"),
        ("/inbox/earlier.png", "done"),
    ])
