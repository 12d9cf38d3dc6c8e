"""An operator's first day: each mistake a new user made is one clear line and a non-zero exit, never a traceback.

In process through click's CliRunner (``helpers.invoke`` lets an unexpected exception propagate, so a traceback
fails the test); the TensorFlow setting is checked on a real interpreter start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

from pneumoscan.config import SHIPPED_MODEL_DIR
from pneumoscan.db import open_database
from pneumoscan.db.writes import save_results
from pneumoscan.domain import Label, Outcome, Result

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return helpers.pneumoscan_env(tmp_path / "data", SHIPPED_MODEL_DIR, **extra)


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str, code: int = 1) -> str:
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def test_explain_into_a_missing_folder_says_so_before_any_work(tmp_path: Path) -> None:
    picture = tmp_path / "x.png"
    picture.write_bytes(b"not read")
    proc = helpers.invoke(["explain", str(picture), "--out", str(tmp_path / "missing" / "x.png")], _env(tmp_path))
    _one_line_error(proc, "--out", f"folder {tmp_path / 'missing'} does not exist", code=2)
    assert "model:" not in proc.stderr  # refused before the model was loaded


@pytest.mark.parametrize(("url", "words"), [
    ("notaurl", ["'notaurl' is not a database URL"]),
    ("mysql://ada:secret@127.0.0.1/scans", ["supports PostgreSQL and SQLite", "'mysql'"]),
])
def test_a_database_url_it_cannot_use(tmp_path: Path, url: str, words: list[str]) -> None:
    line = _one_line_error(helpers.invoke(["results"], _env(tmp_path, PNEUMOSCAN_DATABASE_URL=url)), *words)
    assert "secret" not in line


def test_a_database_that_is_down_is_not_reachable_rather_than_unmigratable(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://pneumoscan:secret@127.0.0.1:{_free_port()}/scans"
    line = _one_line_error(helpers.invoke(["results"], _env(tmp_path, PNEUMOSCAN_DATABASE_URL=url)),
                           "cannot reach the database", "Connection refused")
    assert "migrate" not in line and "secret" not in line


def test_a_sqlite_file_in_a_folder_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "scans.db"
    _one_line_error(helpers.invoke(["results"], _env(tmp_path, PNEUMOSCAN_DATABASE_URL=f"sqlite:///{missing}")),
                    f"{missing.parent}, which does not exist")
    assert not missing.parent.exists()
    # the default data folder is made on first use
    proc = helpers.invoke(["results"], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "pneumoscan.db").is_file()


def _seed(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_database(f"sqlite:///{data_dir / 'pneumoscan.db'}")
    with sessions.begin() as session:
        save_results(session, [Result(str(data_dir / "old.png"), Outcome.DONE, sha256="ab" * 32, kind="png",
                                      byte_size=10, probability=0.1, label=Label.NORMAL, threshold=0.5,
                                      model_version="an-older-model")])
    sessions.dispose()


def test_reclassify_with_the_broker_down(tmp_path: Path) -> None:
    _seed(tmp_path / "data")
    env = _env(tmp_path, PNEUMOSCAN_BROKER_URL=f"redis://127.0.0.1:{_free_port()}/0")
    _one_line_error(helpers.invoke(["reclassify", "--all"], env), "cannot reach the broker", "Connection refused")


def test_the_database_and_the_model_are_named_once(tmp_path: Path) -> None:
    proc = helpers.invoke(["reclassify", "--status", "rejected"], _env(tmp_path))  # nothing to do: no TensorFlow
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("database:") == 1 and proc.stderr.count("model:") == 1, proc.stderr


def test_serve_on_a_port_in_use_fails_before_saying_it_serves(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = helpers.invoke(["serve", "--port", port], _env(tmp_path, PNEUMOSCAN_SECRET_KEY="k" * 32))
    _one_line_error(proc, f"cannot serve on 127.0.0.1:{port}", "in use")
    assert "serving on" not in proc.stderr


@pytest.mark.parametrize("url", ["notaurl", "mysql://ada@127.0.0.1/scans", "postgresql+psycopg://ada@127.0.0.1:{port}/x"])
def test_as_a_user_runs_it_exit_1_and_no_traceback(tmp_path: Path, pneumoscan_exe: Path, url: str) -> None:
    env = _env(tmp_path, PNEUMOSCAN_DATABASE_URL=url.format(port=_free_port()))
    proc = subprocess.run([str(pneumoscan_exe), "results"], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    _one_line_error(proc)


@pytest.mark.parametrize(("given", "expected"), [(None, "2"), ("0", "0")])
def test_tensorflow_chatter_is_off_unless_asked_for(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if given is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = given
    code = "import os, sys, pneumoscan.cli; print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == [expected, "False"]
