"""The `pneumoscan` command as a user runs it: real subprocesses, environment settings, real files.

Checks of options and output formats run the same command in this process through click's CliRunner
(``_invoke``: ``helpers.invoke``), which saves an interpreter start each; exit codes, signals and
"no traceback" are checked on real subprocesses (``_run``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import helpers
import pytest
from support import dicoms, xrays

pytestmark = pytest.mark.timeout(180)

RUN_TIMEOUT = 120  # seconds for one command; a TensorFlow start on a busy machine can take a while


_env = helpers.pneumoscan_env
_invoke = helpers.invoke  # in process, for options and formats


def _run(exe: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _db_rows(data_dir: Path, sql: str) -> list[sqlite3.Row]:
    with sqlite3.connect(data_dir / "pneumoscan.db") as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql).fetchall()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _table_rows(text: str) -> set[tuple[str, ...]]:
    """The word tokens of each line of a rich table (box-drawing characters dropped)."""
    return {tuple(re.findall(r"[\w.:^-]+", line)) for line in text.splitlines()}


# --- scan ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scan_classifies_a_folder_and_prints_a_summary(tmp_path: Path, tiny_bundle: Any,
                                                       pneumoscan_exe: Path) -> None:
    folder, data = tmp_path / "xrays", tmp_path / "data"
    xrays.write_jpeg(xrays.NORMAL_IMAGES[0], folder / "a.jpeg")
    xrays.write_jpeg(xrays.PNEUMONIA_IMAGES[0], folder / "b.jpg")
    xrays.write_png(xrays.NORMAL_IMAGES[1], folder / "sub" / "c.png")
    dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[1], folder / "d.dcm")
    (folder / "corrupt.jpg").write_bytes(os.urandom(3000))
    (folder / "empty.png").write_bytes(b"")
    xrays.write_jpeg(xrays.NORMAL_IMAGES[2], folder / ".hidden.jpeg")  # ignored by rule
    xrays.write_jpeg(xrays.NORMAL_IMAGES[3], folder / "e.jpeg.part")  # ignored by rule
    env = _env(data, tiny_bundle.path)

    proc = _ok(_run(pneumoscan_exe, ["scan", str(folder)], env))

    rows = _db_rows(data, "SELECT i.path, i.status, i.reason, p.label FROM images i "
                          "LEFT JOIN predictions p ON p.image_id = i.id")
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == {"a.jpeg", "b.jpg", "c.png", "d.dcm", "corrupt.jpg", "empty.png"}
    assert {n for n, r in by_name.items() if r["status"] == "done"} == {"a.jpeg", "b.jpg", "c.png", "d.dcm"}
    assert by_name["corrupt.jpg"]["status"] == by_name["empty.png"]["status"] == "rejected"
    # The summary: a title with the file count, and one row per (status, label) with its count.
    assert "6 files" in proc.stdout
    table = _table_rows(proc.stdout)
    labels: dict[str, int] = {}
    for r in rows:
        if r["status"] == "done":
            labels[r["label"]] = labels.get(r["label"], 0) + 1
    for label, n in labels.items():
        assert ("done", label, str(n)) in table, proc.stdout
    assert ("rejected", "2") in table, proc.stdout

    # A second scan finds everything known already: nothing new is written.
    again = _ok(_run(pneumoscan_exe, ["scan", str(folder)], env))
    assert ("skipped:", "already", "classified", "6") in _table_rows(again.stdout), again.stdout
    assert len(_db_rows(data, "SELECT * FROM predictions")) == 4


@pytest.mark.slow
def test_reclassify_runs_a_new_model_on_old_results_and_keeps_them(tmp_path: Path, tiny_bundle: Any,
                                                                      pneumoscan_exe: Path) -> None:
    folder, data = tmp_path / "xrays", tmp_path / "data"
    xrays.distinct_pngs(folder, 3)
    (folder / "corrupt.png").write_bytes(os.urandom(300))
    old = helpers.bundle_as_version(tiny_bundle, tmp_path / "old", "tiny-old-0")
    _ok(_run(pneumoscan_exe, ["scan", str(folder)], _env(data, old.path)))
    env = _env(data, tiny_bundle.path)

    proc = _ok(_run(pneumoscan_exe, ["reclassify"], env))  # embedded mode: classified right here

    assert f"3 images sent through model {tiny_bundle.version}: 3 done" in proc.stdout, proc.stdout
    versions = _db_rows(data, "SELECT p.model_version, count(*) AS n FROM predictions p GROUP BY p.model_version")
    assert {r["model_version"]: r["n"] for r in versions} == {"tiny-old-0": 3, tiny_bundle.version: 3}
    assert "0 images" in _ok(_run(pneumoscan_exe, ["reclassify"], env)).stdout  # nothing left to do
    assert "0 images" in _ok(_run(pneumoscan_exe, ["reclassify", "--since", "2999-01-01"], env)).stdout
    shown = json.loads(_ok(_invoke(["results", "--format", "json"], env)).stdout)
    assert {r["model_version"] for r in shown} == {tiny_bundle.version, None}  # current by default
    history = json.loads(_ok(_invoke(["results", "--all-versions", "--format", "json"], env)).stdout)
    assert len(history) == 3 * 2 + 1


@pytest.mark.slow
def test_reclassify_all_triages_rejected_images_again_under_new_rules(tmp_path: Path, tiny_bundle: Any,
                                                                      pneumoscan_exe: Path) -> None:
    folder, data = tmp_path / "xrays", tmp_path / "data"
    dicoms.write_dicom(xrays.NORMAL_IMAGES[0], folder / "ct.dcm", modality="CT")
    xrays.write_jpeg(xrays.PNEUMONIA_IMAGES[0], folder / "cxr.jpeg")
    _ok(_run(pneumoscan_exe, ["scan", str(folder)], _env(data, tiny_bundle.path)))
    (ct,) = _db_rows(data, "SELECT * FROM images WHERE path LIKE '%ct.dcm'")
    assert ct["status"] == "rejected" and "CT" in ct["reason"]
    widened = _env(data, tiny_bundle.path, PNEUMOSCAN_ALLOWED_MODALITIES="CR,DX,DR,CT")
    # Without --all a rejected image stays settled: its bytes have not changed.
    _ok(_run(pneumoscan_exe, ["reclassify", "--status", "rejected"], widened))
    assert _db_rows(data, f"SELECT status FROM images WHERE id = {ct['id']}")[0]["status"] == "rejected"

    proc = _ok(_run(pneumoscan_exe, ["reclassify", "--all"], widened))

    assert "2 images sent through model tiny-test-1: 2 done" in proc.stdout, proc.stdout
    rows = {Path(r["path"]).name: r for r in _db_rows(data, "SELECT * FROM images")}
    assert (rows["ct.dcm"]["id"], rows["ct.dcm"]["status"]) == (ct["id"], "done")
    predictions = _db_rows(data, "SELECT image_id, count(*) AS n FROM predictions GROUP BY image_id")
    assert {r["image_id"]: r["n"] for r in predictions} == {ct["id"]: 1, rows["cxr.jpeg"]["id"]: 1}


def _without_root_override() -> list[str]:
    """A command prefix under which permissions bind: as root, drop the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a file cannot be made unreadable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.slow
def test_scan_with_odd_names_links_and_an_unreadable_file(tmp_path: Path, tiny_bundle: Any,
                                                          pneumoscan_exe: Path) -> None:
    folder, data = tmp_path / "-in box ü", tmp_path / "data"  # a leading dash, a space, a non-ASCII letter
    names = ["chest x-ray 01.jpeg", "röntgen 胸部.png", "-dash.dcm", "--help.jpg"]
    xrays.write_jpeg(xrays.NORMAL_IMAGES[0], folder / names[0])
    xrays.write_png(xrays.NORMAL_IMAGES[1], folder / names[1])
    dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[0], folder / names[2])
    xrays.write_jpeg(xrays.PNEUMONIA_IMAGES[1], folder / names[3])
    unreadable = xrays.write_jpeg(xrays.NORMAL_IMAGES[2], folder / "locked.jpeg")
    unreadable.chmod(0)
    outside = xrays.write_jpeg(xrays.NORMAL_IMAGES[3], tmp_path / "outside.jpeg")
    (folder / "link.jpeg").symlink_to(outside)
    command = [*_without_root_override(), str(pneumoscan_exe), "scan", "--", folder.name]
    try:
        proc = _ok(subprocess.run(command, env=_env(data, tiny_bundle.path), cwd=tmp_path, capture_output=True,
                                  text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL))
    finally:
        unreadable.chmod(0o644)

    rows = {Path(r["path"]).name: r for r in _db_rows(data, "SELECT * FROM images")}
    assert set(rows) == {*names, "locked.jpeg", "link.jpeg"}
    assert all(rows[n]["status"] == "done" for n in names), {n: rows[n]["reason"] for n in names}
    assert (rows["locked.jpeg"]["status"], rows["locked.jpeg"]["reason"]) == (
        "failed", "permission denied reading the file")
    assert rows["link.jpeg"]["status"] == "rejected" and "symbolic link" in rows["link.jpeg"]["reason"]
    assert not _db_rows(data, f"SELECT * FROM images WHERE sha256 = '{_sha256(outside)}'")
    assert ("failed", "1") in _table_rows(proc.stdout) and ("rejected", "1") in _table_rows(proc.stdout)
    assert "permission denied" in proc.stderr  # logged, one line, no traceback (checked by _ok)


@pytest.mark.slow
def test_reclassify_marks_an_image_whose_file_is_gone_failed(tmp_path: Path, tiny_bundle: Any,
                                                             pneumoscan_exe: Path) -> None:
    folder, data = tmp_path / "xrays", tmp_path / "data"
    kept, gone = xrays.distinct_pngs(folder, 2)
    old = helpers.bundle_as_version(tiny_bundle, tmp_path / "old", "tiny-old-0")
    _ok(_run(pneumoscan_exe, ["scan", str(folder)], _env(data, old.path)))
    before = {Path(r["path"]).name: r for r in _db_rows(data, "SELECT * FROM images")}
    gone.unlink()

    proc = _ok(_run(pneumoscan_exe, ["reclassify"], _env(data, tiny_bundle.path)))

    assert "2 images sent through model tiny-test-1: 1 done, 1 failed" in proc.stdout, proc.stdout
    rows = {Path(r["path"]).name: r for r in _db_rows(data, "SELECT * FROM images")}
    assert len(_db_rows(data, "SELECT * FROM images")) == 2  # no stray row for the missing file
    assert (rows[gone.name]["id"], rows[gone.name]["sha256"]) == (before[gone.name]["id"], before[gone.name]["sha256"])
    assert (rows[gone.name]["status"], rows[gone.name]["reason"]) == (
        "failed", "file disappeared before it could be read")
    assert rows[kept.name]["status"] == "done"


@pytest.mark.parametrize("command", ["worker", "scheduler"])
def test_distributed_commands_need_a_broker(tmp_path: Path, tiny_bundle: Any, pneumoscan_exe: Path,
                                            command: str) -> None:
    args = [command] if command == "worker" else [command, str(tmp_path)]
    proc = _run(pneumoscan_exe, args, _env(tmp_path / "data", tiny_bundle.path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "PNEUMOSCAN_BROKER_URL" in proc.stderr


# --- results -------------------------------------------------------------------------------------

V, OLD = "tiny-test-1", "old-1"
NOW = datetime.now(UTC).replace(microsecond=0)
# name -> status, reason, {model version: (probability, label, threshold)}, updated_at
KNOWN: dict[str, tuple[str, str | None, dict[str, tuple[float, str, float]], datetime]] = {
    "a.jpeg": ("done", None, {V: (0.10, "NORMAL", 0.5), OLD: (0.80, "PNEUMONIA", 0.65)},
               datetime(2020, 1, 1, tzinfo=UTC)),
    "b.jpeg": ("done", None, {V: (0.40, "NORMAL", 0.5)}, NOW - timedelta(minutes=50)),
    "c.png": ("done", None, {V: (0.60, "PNEUMONIA", 0.5)}, NOW - timedelta(minutes=40)),
    "d.dcm": ("done", None, {V: (0.90, "PNEUMONIA", 0.5)}, NOW - timedelta(minutes=30)),
    "e.jpeg": ("done", None, {OLD: (0.70, "PNEUMONIA", 0.65)}, NOW - timedelta(minutes=20)),
    "f.jpeg": ("rejected", "corrupt or truncated JPEG: image file is truncated", {},
               datetime(2020, 6, 1, tzinfo=UTC)),
    "g.jpeg": ("failed", "permission denied reading the file", {}, NOW - timedelta(minutes=10)),
}
NEWEST_FIRST = sorted(KNOWN, key=lambda n: KNOWN[n][3], reverse=True)  # g e d c b f a


@pytest.fixture(scope="module")
def results_env(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Any) -> tuple[dict[str, str], Path]:
    """A database holding exactly the KNOWN rows, written through the project's own save function."""
    from sqlalchemy import update

    from pneumoscan.db import open_database
    from pneumoscan.db.schema import Image
    from pneumoscan.db.writes import save_results
    from pneumoscan.domain import DicomMeta, Result

    data = tmp_path_factory.mktemp("results") / "data"
    folder = Path("/scans")
    sessions = open_database(f"sqlite:///{data / 'pneumoscan.db'}")
    results = []
    for name, (status, reason, predictions, _) in KNOWN.items():
        sha = None if status == "failed" else hashlib.sha256(name.encode()).hexdigest()
        dicom = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5",
                 "modality": "DX", "view_position": "AP"} if name.endswith(".dcm") else {}
        if not predictions:
            results.append(Result(str(folder / name), status, sha256=sha, kind="jpeg", reason=reason))
        for version, (probability, label, threshold) in predictions.items():
            results.append(Result(str(folder / name), status, sha256=sha, kind=name.rsplit(".", 1)[1],
                                  probability=probability, label=label, threshold=threshold,
                                  model_version=version, dicom=DicomMeta(**dicom) if dicom else None))
    with sessions.begin() as session:
        save_results(session, results)
        for name, (*_, updated_at) in KNOWN.items():
            session.execute(update(Image).where(Image.path == str(folder / name)).values(updated_at=updated_at))
    sessions.dispose()
    return _env(data, tiny_bundle.path), folder


def _expected(names: list[str], version: str | None = V) -> list[tuple[Any, ...]]:
    rows = []
    for name in names:
        status, _reason, predictions, _ = KNOWN[name]
        probability, label, _threshold = predictions.get(version, (None, None, None)) if version else (None,) * 3
        rows.append((name, status, label, probability, version if probability is not None else None))
    return rows


def _parse(fmt: str, stdout: str) -> list[dict[str, Any]]:
    if fmt == "json":
        return json.loads(stdout)  # type: ignore[no-any-return]
    rows = list(csv.DictReader(io.StringIO(stdout)))
    for row in rows:
        for key, value in row.items():
            row[key] = None if value == "" else value
        if row["probability"] is not None:
            row["probability"] = float(row["probability"])
    return rows


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (Path(row["path"]).name, row["status"], row["label"], row["probability"], row["model_version"])


RESULTS_CASES = [
    ([], _expected(NEWEST_FIRST), "json"),
    ([], _expected(NEWEST_FIRST), "csv"),
    (["--status", "done"], _expected([n for n in NEWEST_FIRST if KNOWN[n][0] == "done"]), "csv"),
    (["--status", "rejected"], _expected(["f.jpeg"]), "json"),
    (["--label", "pneumonia"], _expected(["d.dcm", "c.png"]), "json"),
    (["--label", "NORMAL"], _expected(["b.jpeg", "a.jpeg"]), "csv"),
    (["--min-probability", "0.3", "--max-probability", "0.7"], _expected(["c.png", "b.jpeg"]), "csv"),
    (["--min-probability", "0.9"], _expected(["d.dcm"]), "json"),
    (["--since", "2024-01-01"], _expected(["g.jpeg", "e.jpeg", "d.dcm", "c.png", "b.jpeg"]), "json"),
    (["--model-version", OLD], _expected(NEWEST_FIRST, OLD), "json"),
    (["--model-version", OLD, "--label", "PNEUMONIA", "--min-probability", "0.75"], _expected(["a.jpeg"], OLD),
     "json"),
    (["--limit", "2"], _expected(["g.jpeg", "e.jpeg"]), "json"),
    (["--status", "done", "--limit", "3"], _expected(["e.jpeg", "d.dcm", "c.png"]), "csv"),
]


@pytest.mark.parametrize(("args", "expected", "fmt"), RESULTS_CASES,
                         ids=[" ".join([*a, "--format", f]) for a, _, f in RESULTS_CASES])
def test_results_filters(results_env: tuple[dict[str, str], Path], args: list[str], expected: list[tuple[Any, ...]],
                         fmt: str) -> None:
    env, _ = results_env
    proc = _ok(_invoke(["results", *args, "--format", fmt], env))
    rows = _parse(fmt, proc.stdout)
    assert [_key(r) for r in rows] == expected


def test_results_all_versions(results_env: tuple[dict[str, str], Path]) -> None:
    env, _ = results_env
    proc = _ok(_invoke(["results", "--all-versions", "--format", "json"], env))
    expected = set()
    for name in KNOWN:
        predictions = KNOWN[name][2]
        expected |= set(_expected([name], None)) if not predictions else {
            _expected([name], version)[0] for version in predictions}
    rows = [_key(r) for r in json.loads(proc.stdout)]
    assert len(rows) == len(expected) == 8  # a.jpeg twice: once per model version
    assert set(rows) == expected


def test_results_json_and_csv_carry_every_field(results_env: tuple[dict[str, str], Path]) -> None:
    from pneumoscan.db.results import RESULT_FIELDS

    env, folder = results_env
    as_json = _parse("json", _ok(_invoke(["results", "--format", "json"], env)).stdout)
    as_csv = _parse("csv", _ok(_invoke(["results", "--format", "csv"], env)).stdout)
    assert [list(r) for r in as_json] == [list(RESULT_FIELDS)] * len(KNOWN)
    assert [list(r) for r in as_csv] == [list(RESULT_FIELDS)] * len(KNOWN)
    by_name = {Path(r["path"]).name: r for r in as_json}
    d = by_name["d.dcm"]
    assert d["path"] == str(folder / "d.dcm")
    assert d["sha256"] == hashlib.sha256(b"d.dcm").hexdigest()
    assert (d["study_uid"], d["series_uid"], d["sop_instance_uid"], d["modality"], d["view_position"]) == (
        "1.2.3", "1.2.3.4", "1.2.3.4.5", "DX", "AP")
    assert d["threshold"] == 0.5
    assert datetime.fromisoformat(d["updated_at"]) == KNOWN["d.dcm"][3]
    assert datetime.fromisoformat(d["classified_at"]).tzinfo is not None
    assert by_name["f.jpeg"]["reason"] == KNOWN["f.jpeg"][1]
    assert by_name["g.jpeg"]["sha256"] is None
    for row_json, row_csv in zip(as_json, as_csv, strict=True):
        assert _key(row_json) == _key(row_csv)
        assert row_json["updated_at"] == row_csv["updated_at"]


def test_results_since_is_local_time(results_env: tuple[dict[str, str], Path], pneumoscan_exe: Path) -> None:
    # In a UTC+05:30 zone, a local time between c (40 min ago) and d (30 min ago) splits them.
    env, _ = results_env
    local = (NOW - timedelta(minutes=35) + timedelta(hours=5, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S")
    proc = _ok(_run(pneumoscan_exe, ["results", "--since", local, "--format", "json"], {**env, "TZ": "IST-5:30"}))
    assert [_key(r) for r in json.loads(proc.stdout)] == _expected(["g.jpeg", "e.jpeg", "d.dcm"])


def test_results_table(results_env: tuple[dict[str, str], Path]) -> None:
    env, _ = results_env
    proc = _ok(_invoke(["results", "--status", "failed"], env))
    assert "g.jpeg" in proc.stdout and "permission denied" in proc.stdout
    assert "a.jpeg" not in proc.stdout
    assert "1 of 1 rows" in proc.stderr
    # Piped (not a terminal): a header and one tab-separated line per row, however long the path.
    lines = _ok(_invoke(["results"], env)).stdout.splitlines()
    assert lines[0].split("\t")[:4] == ["id", "path", "paths", "status"]
    assert len(lines) == 1 + len(KNOWN) and all(len(line.split("\t")) == len(lines[0].split("\t")) for line in lines)


def test_results_names_an_unknown_model_version_and_the_known_ones(results_env: tuple[dict[str, str], Path],
                                                                   pneumoscan_exe: Path) -> None:
    env, _ = results_env
    proc = _run(pneumoscan_exe, ["results", "--model-version", "never-trained"], env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no predictions of model version 'never-trained'" in proc.stderr and OLD in proc.stderr


def test_results_sorts_by_probability_and_says_when_the_limit_cut_the_list(
        results_env: tuple[dict[str, str], Path]) -> None:
    env, _ = results_env
    proc = _ok(_invoke(["results", "--sort", "probability", "--limit", "3", "--format", "json"], env))
    assert [_key(r) for r in json.loads(proc.stdout)] == _expected(["d.dcm", "c.png", "b.jpeg"])
    assert f"3 of {len(KNOWN)} rows" in proc.stderr and "--limit 0" in proc.stderr


def test_results_rejects_bad_options(results_env: tuple[dict[str, str], Path], pneumoscan_exe: Path) -> None:
    env, _ = results_env
    proc = _run(pneumoscan_exe, ["results", "--min-probability", "1.5"], env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--min-probability" in proc.stderr


@contextmanager
def _child(argv: list[str], env: dict[str, str], stderr_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``argv`` as a child process, its stderr in ``stderr_path``; killed on leaving if it is still running."""
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# --- watch ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_watch_runs_until_sigterm(tmp_path: Path, tiny_bundle: Any, pneumoscan_exe: Path) -> None:
    folder, data = tmp_path / "inbox", tmp_path / "data"
    xrays.write_jpeg(xrays.NORMAL_IMAGES[0], folder / "before.jpeg")  # caught up at start
    env = _env(data, tiny_bundle.path)
    stderr_path = tmp_path / "stderr.txt"
    with _child([str(pneumoscan_exe), "watch", str(folder)], env, stderr_path) as proc:
        def names() -> set[str]:
            if not (data / "pneumoscan.db").exists():
                return set()
            try:
                rows = _db_rows(data, "SELECT i.path FROM images i JOIN predictions p ON p.image_id = i.id")
            except sqlite3.OperationalError:  # the schema is still being created
                return set()
            return {Path(r["path"]).name for r in rows}

        def wait_for(wanted: set[str]) -> None:
            helpers.wait_for(lambda: wanted <= names() or proc.poll() is not None, RUN_TIMEOUT,
                             interval=0.2, message=f"{wanted} to be classified")
            assert proc.poll() is None, f"watch exited early ({proc.returncode}): {stderr_path.read_text()}"

        wait_for({"before.jpeg"})
        dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[0], folder / "after.dcm")  # arrives while watching
        wait_for({"before.jpeg", "after.dcm"})
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=60)
    text = stderr_path.read_text()
    assert returncode == 0, text
    assert "Traceback" not in text, text
    assert "watching" in text and "stopped" in text
    assert names() == {"before.jpeg", "after.dcm"}
    # One line per batch at the default level, so a user can see that it works.
    assert text.count("batch of 1: 1 done") == 2, text


# --- errors and help -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["scan", "watch"])
def test_missing_model_is_a_one_line_error(tmp_path: Path, pneumoscan_exe: Path, command: str) -> None:
    folder = tmp_path / "inbox"
    xrays.write_jpeg(xrays.NORMAL_IMAGES[0], folder / "a.jpeg")
    proc = _run(pneumoscan_exe, [command, str(folder)], _env(tmp_path / "data", "/nonexistent"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error:") and "/nonexistent" in lines[0] and "PNEUMOSCAN_MODEL" in lines[0]
    assert (folder / "a.jpeg").exists()


def test_invalid_setting_is_a_one_line_error(tmp_path: Path, tiny_bundle: Any, pneumoscan_exe: Path) -> None:
    proc = _run(pneumoscan_exe, ["results"], _env(tmp_path / "data", tiny_bundle.path, PNEUMOSCAN_BATCH_SIZE="0"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "PNEUMOSCAN_BATCH_SIZE" in lines[0], proc.stderr


def test_db_upgrade_creates_the_schema(tmp_path: Path, pneumoscan_exe: Path) -> None:
    data = tmp_path / "data"
    proc = _ok(_run(pneumoscan_exe, ["db", "upgrade"], _env(data, "/nonexistent")))
    assert "created the schema (revision " in proc.stdout
    again = _ok(_run(pneumoscan_exe, ["db", "upgrade"], _env(data, "/nonexistent")))
    assert "database is up to date (revision " in again.stdout
    tables = {r["name"] for r in _db_rows(data, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"images", "predictions", "reviews", "alembic_version"} <= tables


def test_scan_of_a_missing_folder_fails_cleanly(tmp_path: Path, tiny_bundle: Any, pneumoscan_exe: Path) -> None:
    proc = _run(pneumoscan_exe, ["scan", str(tmp_path / "nope")], _env(tmp_path / "data", tiny_bundle.path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr


COMMANDS = ("scan", "watch", "results", "db", "worker", "scheduler", "reclassify")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], list(COMMANDS)),
        (["scan"], ["TARGET", "summary"]),
        (["watch"], ["FOLDER", "quiet period"]),
        (["results"], ["--status", "--label", "--min-probability", "--max-probability", "--since",
                       "--model-version", "--limit", "--format"]),
        (["db"], ["upgrade"]),
        (["db", "upgrade"], ["migrations"]),
        (["worker"], ["--concurrency", "--max-tasks-per-child", "--loglevel"]),
        (["scheduler"], ["FOLDER", "beat"]),
        (["reclassify"], ["--all", "--since", "--status"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0] in COMMANDS else None,
)
def test_help(tmp_path: Path, args: list[str], words: list[str]) -> None:
    proc = _ok(_invoke([*args, "--help"], _env(tmp_path / "data", "/nonexistent")))
    assert proc.stdout.startswith("Usage: pneumoscan")
    text = " ".join(proc.stdout.split())  # help is wrapped to the terminal width
    for word in words:
        assert word in text, (word, proc.stdout)
    assert not (tmp_path / "data").exists()  # help touches nothing


# --- receive ---------------------------------------------------------------------------------------


def test_receive_answers_an_echo_and_stops_on_sigterm(tmp_path: Path, pneumoscan_exe: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
    from support.dcmtk import free_port

    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "stderr.txt"
    with _child([str(pneumoscan_exe), "receive", "--port", str(port), "--host", "127.0.0.1", "--ae-title", "TESTSCP",
                 "--spool", str(spool)], _env(tmp_path / "data", "/nonexistent"), log) as proc:
        helpers.wait_for(lambda: "receiving as" in log.read_text() or proc.poll() is not None, RUN_TIMEOUT,
                         message="the receiver to listen")
        assert proc.poll() is None, log.read_text()
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        association = ae.associate("127.0.0.1", port, ae_title="TESTSCP")
        assert association.is_established
        assert association.send_c_echo().Status == 0x0000
        association.release()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=60)
    text = log.read_text()
    assert returncode == 0 and "Traceback" not in text, text
    assert f"receiving as TESTSCP on 127.0.0.1:{port} into {spool} from any AE" in text and "stopped" in text
