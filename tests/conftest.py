"""Shared fixtures: a tiny real Keras model bundle, settings, a real SQLite database, real image files."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests must not pick up a developer's PNEUMOSCAN_* settings (a real database URL, a broker...).
for _name in [n for n in os.environ if n.startswith("PNEUMOSCAN_")]:
    del os.environ[_name]
# Settings built without a data folder (as some tests do) resolve the patient salt in the default
# one: keep that out of the developer's own ~/.local/share.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="pneumoscan-tests-")
atexit.register(shutil.rmtree, os.environ["XDG_DATA_HOME"], ignore_errors=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).parent))  # make tests/helpers.py and tests/support importable

import helpers  # noqa: E402
from support import dicoms, xrays  # noqa: E402

TINY_VERSION = "tiny-test-1"
TINY_INPUT_SIZE = 64


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real, untrained tiny Keras model saved as a bundle; built once per session."""
    import keras

    from pneumoscan.models.architectures import build_model
    from pneumoscan.models.bundle import ModelCard, write_bundle

    keras.utils.set_random_seed(0)
    model = build_model("tiny", TINY_INPUT_SIZE)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    card = ModelCard(version=TINY_VERSION, input_size=TINY_INPUT_SIZE, threshold=0.5, architecture="tiny")
    return write_bundle(out, model, card)


def _settings(tmp_path: Path, **changes: Any) -> Any:
    from pneumoscan.config import Settings

    return Settings(data_dir=tmp_path / "data", quiet_period=0.5, max_batch_wait=0.3, batch_size=8,
                    patient_salt="test-salt", password_hashing="cheapest", model_cache_dir=helpers.MODEL_CACHE,
                    **changes)


@pytest.fixture
def db_settings(tmp_path: Path) -> Any:
    """Settings for a test that needs no model: those of ``settings`` (same data folder), with no bundle.

    The model names a folder that does not exist, so a test that uses one without asking for it fails.
    """
    return _settings(tmp_path, model=tmp_path / "no-model")


@pytest.fixture
def settings(tmp_path: Path, tiny_bundle: Any) -> Any:
    """Settings for one test: data (and the SQLite file) in tmp_path/data, the tiny model, short waits.

    Converted models go to the run's shared cache (``helpers.MODEL_CACHE``), as for `pneumoscan` children.

    Passwords are hashed with argon2's cheapest parameters (a real setting; a hash made under another
    profile still verifies), since a full-strength hash costs 0.2 to 0.7 s.
    """
    return _settings(tmp_path, model=tiny_bundle.path)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite database migrated to the newest schema once per session (ten migrations, 0.2 s)."""
    from pneumoscan.db import open_database

    path = tmp_path_factory.mktemp("migrated") / "pneumoscan.db"
    open_database(f"sqlite:///{path}").dispose()
    # The last connection's close checkpoints the write-ahead log into the file: the file is the database.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture
def sessions(db_settings: Any, migrated_sqlite: Path) -> Iterator[Any]:
    """A session factory on a real, migrated SQLite file in the test's data folder (a copy of ``migrated_sqlite``).

    Opened as the app opens it (``open_database`` finds the schema current), and needs no model.
    """
    from pneumoscan.db import open_database

    db_file = db_settings.data_dir / "pneumoscan.db"
    db_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_sqlite, db_file)
    factory = open_database(db_settings.sqlalchemy_url)
    yield factory
    factory.dispose()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """An empty folder to put input files in (apart from the data folder)."""
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def mixed_files(inbox: Path) -> dict[str, tuple[Path, str]]:
    """Real chest X-rays as two JPEGs, two PNGs and one DICOM in the inbox: name -> (path, kind)."""
    n, p = xrays.NORMAL_IMAGES, xrays.PNEUMONIA_IMAGES
    files = {
        "normal.jpeg": (xrays.write_jpeg(n[0], inbox / "normal.jpeg"), "jpeg"),
        "pneumonia.jpg": (xrays.write_jpeg(p[0], inbox / "pneumonia.jpg"), "jpeg"),
        "normal.png": (xrays.write_png(n[1], inbox / "normal.png"), "png"),
        "pneumonia-rgb.png": (xrays.write_png(p[1], inbox / "pneumonia-rgb.png", mode="RGB"), "png"),
        "study.dcm": (dicoms.write_dicom(p[2], inbox / "study.dcm"), "dicom"),
    }
    return files


@pytest.fixture(scope="session")
def pneumoscan_exe() -> Path:
    """The installed `pneumoscan` console script, next to this interpreter."""
    exe = Path(sys.executable).parent / "pneumoscan"
    assert exe.is_file(), f"console script not found at {exe}; install the project (pip install -e .)"
    return exe


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running (after a short grace period)."""
    before = _threads()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in _threads() - before if not t.daemon]
        if not leaked or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if leaked:
        pytest.fail(f"test leaked non-daemon threads: {', '.join(sorted(t.name for t in leaked))}")


# The fast lane (-m "not slow and not integration") stays fast only while long tests carry the mark: name
# those that took longer than this without it, at the end of the run (a hint, not a failure: a busy
# machine stretches every test).
SLOW_AFTER = 10.0
_unmarked_slow: list[tuple[float, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when in ("setup", "call") and report.duration > SLOW_AFTER and not (
            {"slow", "integration"} & set(report.keywords)):
        _unmarked_slow.append((report.duration, f"{report.nodeid} ({report.when})"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _unmarked_slow:
        terminalreporter.section("long tests without the slow mark")
        for duration, name in sorted(_unmarked_slow, reverse=True):
            terminalreporter.line(f"{duration:6.1f}s {name}: mark it @pytest.mark.slow, or make it faster")
