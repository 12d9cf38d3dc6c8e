"""Test helpers: the decoding rules, the `pneumoscan` child environment and bundle copies (images: tests/support)."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from support import process

wait_for = process.wait_for  # shared with bench/ (tests/support/process.py)


def policy(**changes: Any) -> Any:
    """A default install's decoding rules (built by Settings, with a fixed salt); ``changes`` replace fields."""
    import dataclasses

    from pneumoscan.config import Settings

    return dataclasses.replace(Settings(patient_salt="test-salt").decode_policy, **changes)


POLICY = policy()

# One cache of converted models (PNEUMOSCAN_MODEL_CACHE_DIR) for every `pneumoscan` child of this test run:
# the first child converts the tiny model for the CPU engine (importing TensorFlow, about 6 s of CPU), and
# every later one loads the conversion without TensorFlow (about 1 s), as a site's processes share theirs.
# Entries are keyed by the model file's sha256 and written whole, so children that start together are safe.
MODEL_CACHE = Path(tempfile.mkdtemp(prefix="pneumoscan-model-cache-"))
atexit.register(shutil.rmtree, MODEL_CACHE, ignore_errors=True)


def pneumoscan_env(data_dir: Path, model: Path | str, **extra: str) -> dict[str, str]:
    """The environment for running `pneumoscan` as a user would, with short waits and small batches.

    Converted models come from the run's shared ``MODEL_CACHE``, and passwords are hashed cheaply.
    """
    return process.pneumoscan_env(data_dir, model, **{"PNEUMOSCAN_QUIET_PERIOD": "0.5",
                                                      "PNEUMOSCAN_MAX_BATCH_WAIT": "0.3",
                                                      "PNEUMOSCAN_BATCH_SIZE": "8",
                                                      "PNEUMOSCAN_MODEL_CACHE_DIR": str(MODEL_CACHE),
                                                      "PNEUMOSCAN_PASSWORD_HASHING": "cheapest", **extra})


def invoke(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``pneumoscan ARGS`` under ``env`` in this process (click's CliRunner), reported as a subprocess run.

    For checks of options and output formats, where an interpreter start (and a TensorFlow import) per
    call buys nothing; exit codes, signals and "no traceback" are checked on real subprocesses. An
    exception the command does not turn into a message propagates, failing the test with its traceback.
    With a broker (PNEUMOSCAN_BROKER_URL) the command runs as a real subprocess all the same: distributed
    mode builds the process's one Celery app (``worker.app.get_app``), which must not outlive the test.
    """
    if env.get("PNEUMOSCAN_BROKER_URL"):
        exe = Path(sys.executable).with_name("pneumoscan")
        return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    from click.testing import CliRunner

    from pneumoscan.cli import main

    result = CliRunner().invoke(main, args, env=env, prog_name="pneumoscan", catch_exceptions=False)
    return subprocess.CompletedProcess(["pneumoscan", *args], result.exit_code, result.stdout, result.stderr)


def bundle_as_version(bundle: Any, folder: Path, version: str) -> Any:
    """A copy of a model bundle under another version: the same model, as an older or newer release."""
    from dataclasses import replace

    from pneumoscan.models.bundle import load_bundle, read_card, write_card

    shutil.copytree(bundle.path, folder)
    write_card(folder, replace(read_card(folder), version=version))
    return load_bundle(folder)
