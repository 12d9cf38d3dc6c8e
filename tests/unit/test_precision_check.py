"""`pneumoscan model check`: the gate's arithmetic, the check on a real (small) validation split, and the
refusal of a precision that has not passed it, as the operator sees it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke

from pneumoscan.config import SHIPPED_MODEL_DIR
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.engine import check_record_path
from pneumoscan.models.precision import GATE, agreement

FIXTURES = Path(__file__).parents[1] / "fixtures" / "test_images"
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")


def test_the_gate_is_the_written_one() -> None:
    written = (Path(__file__).parents[2] / "docs" / "model-eval" / "precision-gate.md").read_text()
    assert GATE == {"label_agreement_min": 0.995, "mean_abs_dp_max": 0.005, "p99_abs_dp_max": 0.04}
    for limit in (">= 99.5%", "<= 0.005", "<= 0.04"):
        assert limit in written


def test_agreement_passes_small_differences_and_fails_each_limit() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 1000)
    same = agreement(p, np.clip(p + rng.normal(0, 1e-3, 1000), 0, 1), 0.5)
    assert same["passed"] and same["images"] == 1000 and same["max_abs_dp"] < 0.01
    flipped = p.copy()
    flipped[:6] = np.where(p[:6] >= 0.5, 0.0, 1.0)  # 6 labels of 1000 flip: 99.4% agreement
    assert not agreement(p, flipped, 0.5)["passed"]
    assert agreement(p, flipped, 0.5)["labels_flipped"] == 6
    assert not agreement(p, np.clip(p + 0.006, 0, 1), 2.0)["passed"]  # mean |dp| over 0.005
    tail = p.copy()
    tail[:20] += 0.05  # 2% of images 0.05 away, the labels unchanged (threshold above every p)
    figures = agreement(p, tail, 2.0)
    assert figures["mean_abs_dp"] <= 0.005 and figures["p99_abs_dp"] > 0.04 and not figures["passed"]
    with pytest.raises(ValueError, match="cannot compare"):
        agreement(p, p[:10], 0.5)
    with pytest.raises(ValueError, match="cannot compare"):
        agreement(np.zeros(0), np.zeros(0), 0.5)


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    """A DATA folder of the 20 real fixture radiographs as its train split (no test split at all)."""
    for label in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(FIXTURES / label, tmp_path / "data" / "train" / label)
    return tmp_path / "data"


@needs_openvino
@pytest.mark.slow
def test_check_fp32_records_its_figures_and_bf16_is_refused_until_checked(small_data: Path, tmp_path: Path,
                                                                         pneumoscan_exe: Path) -> None:
    env = {"PNEUMOSCAN_DATA_DIR": str(tmp_path / "home"), "PNEUMOSCAN_PATIENT_SALT": "test"}
    done = invoke(["model", "check", str(small_data), "--precision", "fp32"], env)
    assert done.returncode == 0, done.stderr
    assert "passed: PNEUMOSCAN_PRECISION=fp32" in done.stdout
    sha = load_bundle(SHIPPED_MODEL_DIR).model_sha256
    cache = tmp_path / "home" / "model-cache"
    record = json.loads(check_record_path(cache, sha, "fp32").read_text())
    assert record["passed"] and record["labels_flipped"] == 0 and record["max_abs_dp"] <= 1e-4
    assert 1 <= record["images"] < 20 and record["precision"] == "fp32" and record["cpu"]
    assert not (small_data / "test").exists()

    # bf16 not checked here: a scan refuses it in one line that names the command, before touching a file.
    inbox = tmp_path / "inbox"
    shutil.copytree(FIXTURES / "NORMAL", inbox)
    refused = subprocess.run([str(pneumoscan_exe), "scan", str(inbox)], capture_output=True,
                             text=True, timeout=300, env={**env, "PNEUMOSCAN_PRECISION": "bf16",
                                                          "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert ("has not passed `pneumoscan model check DATA --precision bf16` on this machine" in refused.stderr
            or "needs a CPU with BF16" in refused.stderr), refused.stderr


def test_check_needs_a_train_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = invoke(["model", "check", str(tmp_path / "empty"), "--precision", "fp32"],
                  {"PNEUMOSCAN_DATA_DIR": str(tmp_path / "home"), "PNEUMOSCAN_PATIENT_SALT": "test"})
    assert done.returncode != 0
    assert "no validation images" in done.stderr or "train" in done.stderr
