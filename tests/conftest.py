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


@pytest.fixture
def settings(tmp_path: Path, tiny_bundle: Any) -> Any:
    """Settings for one test: data (and the SQLite file) in tmp_path/data, the tiny model, short waits."""
    from pneumoscan.config import Settings

    return Settings(data_dir=tmp_path / "data", model=tiny_bundle.path, quiet_period=0.5,
                    max_batch_wait=0.3, batch_size=8, patient_salt="test-salt")


@pytest.fixture
def sessions(settings: Any) -> Iterator[Any]:
    """A session factory on a real, migrated SQLite file in the test's data folder."""
    from pneumoscan.db import open_database

    factory = open_database(settings.sqlalchemy_url)
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
