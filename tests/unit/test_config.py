"""Settings: PNEUMOSCAN_* environment variables, defaults, and the per-install patient salt."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from pneumoscan.config import SHIPPED_MODEL_DIR, Settings


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PNEUMOSCAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PNEUMOSCAN_BATCH_SIZE", "5")
    monkeypatch.setenv("PNEUMOSCAN_QUIET_PERIOD", "0.25")
    monkeypatch.setenv("PNEUMOSCAN_ALLOWED_MODALITIES", " dx, cr ,")
    monkeypatch.setenv("PNEUMOSCAN_BROKER_URL", "")
    s = Settings()
    assert (s.data_dir, s.batch_size, s.quiet_period) == (tmp_path, 5, 0.25)
    assert s.modality_set == frozenset({"DX", "CR"})
    assert s.embedded and s.broker_url is None
    assert s.sqlalchemy_url == f"sqlite:///{tmp_path / 'pneumoscan.db'}"
    assert s.model_path == SHIPPED_MODEL_DIR
    # Constructor arguments win over the environment.
    assert Settings(batch_size=7).batch_size == 7


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMOSCAN_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_salt_from_settings(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, patient_salt="pepper")
    assert s.salt == b"pepper"
    assert not (tmp_path / "patient_salt").exists()


def test_random_salt_is_created_once_and_private(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path / "data").salt
    path = tmp_path / "data" / "patient_salt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64
    assert Settings(data_dir=tmp_path / "data").salt == first  # kept across runs
    assert Settings(data_dir=tmp_path / "other").salt != first  # and per install
