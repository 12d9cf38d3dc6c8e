"""Every path a content was seen at is kept, so each copy's result can be found by its own path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helpers
import pytest
from support import xrays

from pneumoscan.db.schema import Image, Sighting
from pneumoscan.pipeline import classify_paths


@pytest.mark.slow
def test_both_files_of_a_duplicate_pair_are_found_by_their_own_paths(tmp_path: Path, tiny_bundle: Any,
                                                                     pneumoscan_exe: Path) -> None:
    inbox = tmp_path / "inbox"
    (first,) = xrays.distinct_pngs(inbox / "2026-11", 1, prefix="scan")
    copy = inbox / "2026-12" / "copy_of_scan.png"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    (other, _) = xrays.distinct_pngs(inbox / "other", 2, prefix="other", start=5)
    env = helpers.pneumoscan_env(tmp_path / "data", tiny_bundle.path)
    scanned = subprocess.run([str(pneumoscan_exe), "scan", str(inbox)], env=env, capture_output=True, text=True,
                             timeout=300)
    assert scanned.returncode == 0, scanned.stderr
    assert "same content as another file here" in scanned.stdout

    def found(pattern: str) -> list[dict[str, Any]]:  # in process: an option's matches, not the process
        proc = helpers.invoke(["results", "--path", pattern, "--format", "json"], env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    by_first, by_copy = found(str(first)), found("*/2026-12/copy_of_*")
    assert len(by_first) == len(by_copy) == 1 and by_first[0]["id"] == by_copy[0]["id"]
    assert by_first[0]["paths"] == 2 and by_first[0]["status"] == "done"
    assert len(found(str(inbox / "*"))) == 3  # three contents, four files
    assert found("*no-such-file*") == []
    assert len(found(str(other).replace("-0005", "-000?"))) == 2  # ? matches one character
    assert found(str(other).replace("-0005", "_0005")) == []  # _ and % are literal, as in a shell glob


def test_a_sighting_keeps_first_and_last_seen_size_and_mtime(tmp_path: Path, tiny_bundle: Any, settings: Any,
                                                             sessions: Any) -> None:
    (path,) = xrays.distinct_pngs(tmp_path / "in", 1)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    classify_paths([path], bundle=tiny_bundle, sessions=sessions, settings=settings)
    elsewhere = tmp_path / "moved" / path.name
    elsewhere.parent.mkdir()
    shutil.copy(path, elsewhere)
    classify_paths([path, elsewhere], bundle=tiny_bundle, sessions=sessions, settings=settings)
    with sessions() as session:
        (image,) = session.query(Image).all()
        sightings = {s.path: s for s in session.query(Sighting).order_by(Sighting.path)}
    assert set(sightings) == {str(path), str(elsewhere)}
    first = sightings[str(path)]
    assert first.mtime == 1_700_000_000 and first.byte_size == path.stat().st_size
    assert first.last_seen_at > first.first_seen_at and first.image_id == image.id


@pytest.mark.slow
def test_a_relative_scan_then_reclassify_from_another_folder_fails_nothing(tmp_path: Path, tiny_bundle: Any,
                                                                           pneumoscan_exe: Path) -> None:
    xrays.distinct_pngs(tmp_path / "site" / "xrays", 3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    old = helpers.bundle_as_version(tiny_bundle, tmp_path / "old", "tiny-old-0")
    env = helpers.pneumoscan_env(tmp_path / "data", old.path)

    def run(*args: str, cwd: Path, model: Path) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(pneumoscan_exe), *args], env={**env, "PNEUMOSCAN_MODEL": str(model)}, cwd=cwd,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    run("scan", "xrays", cwd=tmp_path / "site", model=old.path)
    proc = run("reclassify", "--all", cwd=elsewhere, model=tiny_bundle.path)
    assert "3 images sent through model tiny-test-1: 3 done" in proc.stdout, proc.stdout
    rows = json.loads(run("results", "--format", "json", cwd=elsewhere, model=tiny_bundle.path).stdout)
    assert [r["status"] for r in rows] == ["done"] * 3
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)
