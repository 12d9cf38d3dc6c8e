"""Settings: PNEUMOSCAN_* environment variables, defaults, and the per-install patient salt."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
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


def test_salt_is_resolved_when_the_settings_are_built(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    path = tmp_path / "data" / "patient_salt"
    assert path.read_text().encode() == settings.salt
    path.unlink()  # nothing reads the file again: decode threads only ever see the value
    assert settings.salt == settings.salt and len(settings.salt) == 64
    assert "patient_salt" not in repr(settings) and settings.salt.decode() not in repr(settings)


def test_an_empty_salt_file_is_refused_not_used(tmp_path: Path) -> None:
    (tmp_path / "patient_salt").write_text("")  # as the old in-place write could leave it
    with pytest.raises(ValidationError, match="is empty"):
        Settings(data_dir=tmp_path)


# Two children race to make the salt of each of 20 fresh installs. Each imports everything once, then per
# round says "ready" and waits for the install's folder on stdin: the parent writes it to both only when
# both are ready, so that they resolve the salt at the same moment, in two real processes.
_CHILD = """
import os, sys
from pneumoscan.config import Settings
while True:
    print("ready", flush=True)
    folder = sys.stdin.readline().rstrip("\\n")
    if not folder:
        break
    os.environ["PNEUMOSCAN_DATA_DIR"] = folder
    print(Settings().salt.decode(), flush=True)
"""


def _stderr(children: list[subprocess.Popen[str]]) -> list[str]:
    """What the children wrote to stderr (a traceback), once they are stopped."""
    for child in children:
        child.kill()
    return [child.communicate()[1] for child in children]


def test_two_processes_starting_at_once_agree_on_one_complete_salt(tmp_path: Path) -> None:
    children = [subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for round_ in range(20):
            for child in children:
                assert child.stdout is not None and child.stdout.readline() == "ready\n", child.communicate()
            for child in children:
                assert child.stdin is not None
                child.stdin.write(f"{tmp_path / f'install-{round_}'}\n")
                child.stdin.flush()
            outcomes = [child.stdout.readline() if child.stdout else "" for child in children]
            salts = {out.strip() for out in outcomes}
            assert len(salts) == 1 and len(salts.pop()) == 64, (round_, outcomes, _stderr(children))
            assert sorted(p.name for p in (tmp_path / f"install-{round_}").iterdir()) == ["patient_salt"]
        errors = [child.communicate(input="\n", timeout=60)[1] for child in children]
    finally:
        for child in children:
            child.kill()
    assert [child.returncode for child in children] == [0, 0], errors


def test_a_broker_without_a_shared_salt_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="PNEUMOSCAN_BROKER_URL"):
        Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0")
    with pytest.raises(ValidationError, match="PNEUMOSCAN_BROKER_URL"):
        Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0", patient_salt="")
    assert Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0", patient_salt="shared").salt == b"shared"
    assert not (tmp_path / "patient_salt").exists()  # no per-machine salt is ever made in distributed mode


def test_the_command_refuses_to_start_with_a_broker_and_no_salt(tmp_path: Path, pneumoscan_exe: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PNEUMOSCAN_DATA_DIR": str(tmp_path / "data"),
           "PNEUMOSCAN_BROKER_URL": "redis://127.0.0.1:6379/0"}

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(pneumoscan_exe), "results"], env={**env, **extra}, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)

    refused = run({})
    assert refused.returncode == 1, refused
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "PNEUMOSCAN_PATIENT_SALT" in lines[0] and "share" in lines[0]
    assert not (tmp_path / "data" / "patient_salt").exists()
    # The same command with a shared salt starts (`results` needs the database only, not the broker).
    accepted = run({"PNEUMOSCAN_PATIENT_SALT": "shared-secret"})
    assert accepted.returncode == 0, accepted.stderr
