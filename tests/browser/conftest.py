"""Fixtures for the browser tests: a scanned database, two users, `pneumoscan serve` and headless Chromium.

Everything runs for real: the CLI as subprocesses of the installed console script, the shipped model
(the heatmap needs it), the app on a free local port, and Debian's Chromium driven by its chromedriver.
One server and one browser serve every test of a module, to keep the 2-core machine from thrashing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import chromium

FIXTURE_IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "test_images"
PASSWORD = "a-long-password-for-tests"
ADMIN, REVIEWER = "ada", "rex"
CLI_TIMEOUT = 240  # a scan loads TensorFlow: tens of seconds on two busy cores
START_TIMEOUT = 120
SCREENSHOTS_ENV = "SCREENSHOTS_DIR"  # not PNEUMOSCAN_*: tests/conftest.py clears those


@dataclass
class Served:
    """A running `pneumoscan serve`, with what the tests need to talk to it and to its database."""

    url: str
    env: dict[str, str]
    exe: Path
    log: Path

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `pneumoscan ARGS` against the same data folder; fail the test on a non-zero exit."""
        proc = subprocess.run([str(self.exe), *args], env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=CLI_TIMEOUT, stdin=None if stdin is not None else subprocess.DEVNULL)
        assert proc.returncode == 0, (f"pneumoscan {' '.join(args)} exited {proc.returncode}\n"
                                      f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def results(self, *args: str) -> list[dict[str, Any]]:
        rows = json.loads(self.cli("results", "--format", "json", "--limit", "0", *args).stdout)
        assert isinstance(rows, list)
        return rows


def _child_env(data_dir: Path) -> dict[str, str]:
    """This environment less any PNEUMOSCAN_* setting, plus a data folder and a salt; the shipped model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMOSCAN_")}
    env.update({"PNEUMOSCAN_DATA_DIR": str(data_dir), "PNEUMOSCAN_PATIENT_SALT": "browser-test-salt",
                "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "250"})
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pneumoscan_exe: Path) -> Iterator[Served]:
    """The fixture X-rays scanned into a fresh database, an admin and a reviewer, and the app serving it."""
    root = tmp_path_factory.mktemp("browser-app")
    data_dir = root / "data"
    env = _child_env(data_dir)
    port = chromium.free_port()
    served = Served(url=f"http://127.0.0.1:{port}", env=env, exe=pneumoscan_exe, log=root / "serve.log")
    served.cli("scan", str(FIXTURE_IMAGES))
    served.cli("users", "add", ADMIN, "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    served.cli("users", "add", REVIEWER, "--role", "reviewer", "--password-stdin", stdin=PASSWORD + "\n")

    try:
        with chromium.serving(pneumoscan_exe, env, port, served.log, START_TIMEOUT):
            yield served
    except chromium.ServeFailed as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium through chromedriver, both given by path (selenium-manager must not download)."""
    if not chromium.available():
        pytest.skip(f"needs {chromium.CHROMIUM} and {chromium.CHROMEDRIVER} (Debian's chromium and chromium-driver)")
    root = tmp_path_factory.mktemp("chromium")
    with chromium.chromium(root / "profile", root / "chromedriver.log") as driver:
        yield driver


@pytest.fixture(scope="session")
def screenshots_dir() -> Path | None:
    """The folder named by SCREENSHOTS_DIR (made if missing), else None."""
    value = os.environ.get(SCREENSHOTS_ENV)
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def screenshot(browser: Any, tmp_path: Path, screenshots_dir: Path | None) -> Any:
    """save(name): a PNG of the browser window in tmp_path, and in the screenshot folder when one is set."""

    def save(name: str) -> Path:
        data = browser.get_screenshot_as_png()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, f"screenshot {name} looks empty"
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        if screenshots_dir is not None:
            (screenshots_dir / f"{name}.png").write_bytes(data)
        return path

    return save
