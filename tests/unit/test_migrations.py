"""Migrations on a real SQLite file: relative paths of old rows become absolute where the file is found."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from pneumoscan.db import make_engine, upgrade


def test_relative_paths_are_made_absolute_where_the_file_is_and_reported_where_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    (scans / "sub" / "a.png").write_bytes(b"x")
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine, "0006")
    with engine.begin() as connection:
        for i, path in enumerate(["sub/a.png", "gone/b.png", "/already/absolute.png"]):
            connection.execute(text("INSERT INTO images (sha256, path, status, first_seen_at, updated_at) "
                                    "VALUES (:sha, :path, 'done', '2026-01-01', '2026-01-01')"),
                               {"sha": f"{i:064x}", "path": path})
            connection.execute(text("INSERT INTO sightings (image_id, path, first_seen_at, last_seen_at) "
                                    "VALUES (:id, :path, '2026-01-01', '2026-01-01')"), {"id": i + 1, "path": path})
    monkeypatch.chdir(scans)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.db.migrations"):
        upgrade(engine)
    with engine.connect() as connection:
        for table in ("images", "sightings"):
            paths = [p for (p,) in connection.execute(text(f"SELECT path FROM {table} ORDER BY id"))]
            assert paths == [str(scans / "sub" / "a.png"), "gone/b.png", "/already/absolute.png"]
    assert "1 images rows keep a relative path" in caplog.text and "gone/b.png" in caplog.text
    engine.dispose()
