"""Waiting for things, and the environment a `pneumoscan` child process runs in, for tests and benchmarks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message or predicate}")
        time.sleep(interval)


def unavailable(message: str) -> NoReturn:
    """A test's real peer or service is missing: fail under CI (`.ci/run` installs and starts them all), else skip."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def pneumoscan_env(data_dir: Path, model: Path | str, **extra: str) -> dict[str, str]:
    """This process's environment less any PNEUMOSCAN_* setting, plus a data folder, a model and a fixed
    salt, quiet TensorFlow and wide tables; ``extra`` adds or overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMOSCAN_")}
    env.update({"PNEUMOSCAN_DATA_DIR": str(data_dir), "PNEUMOSCAN_MODEL": str(model),
                "PNEUMOSCAN_PATIENT_SALT": "test-salt", "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "250"})
    env.update(extra)
    return env
