"""Model bundles: loading and checking the card, batch prediction with the tiny real model, labels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
from support import xrays

from pneumoscan.imaging import decode
from pneumoscan.models.bundle import CARD_FILE, MODEL_FILE, BundleError, load_bundle


def test_load_bundle_reads_the_card(tiny_bundle: Any) -> None:
    bundle = load_bundle(tiny_bundle.path, verify=True)
    assert (bundle.version, bundle.input_size, bundle.threshold) == ("tiny-test-1", 64, 0.5)
    assert bundle.card.architecture == "tiny"
    assert bundle.card.sha256 is not None and len(bundle.card.sha256) == 64


def test_predict_batches(tiny_bundle: Any) -> None:
    batch = np.stack([decode(p.read_bytes(), (64, 64), helpers.POLICY).pixels for p in xrays.ALL_IMAGES])
    probabilities = tiny_bundle.predict(batch)
    assert probabilities.shape == (len(xrays.ALL_IMAGES),)
    assert probabilities.dtype == np.float32
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert len(np.unique(probabilities)) > 1  # it looks at the pixels
    # Same answers one at a time, with a channel axis, and from a fresh load of the same files.
    one_by_one = np.concatenate([tiny_bundle.predict(x[None, ..., None]) for x in batch])
    np.testing.assert_allclose(one_by_one, probabilities, atol=1e-5)
    np.testing.assert_allclose(load_bundle(tiny_bundle.path).predict(batch), probabilities, atol=1e-6)
    assert tiny_bundle.predict(np.zeros((0, 64, 64), np.float32)).shape == (0,)


_PREDICT_ALONE = """
import sys
from pathlib import Path

import numpy as np

import pneumoscan.models
from pneumoscan.models.bundle import ModelBundle, read_card

folder = Path(pneumoscan.models.__file__).parent / "default"  # the shipped bundle (temperature 1.41)
card = read_card(folder)
assert card.temperature != 1.0
class Network:  # stands in for TensorFlow
    def run(self, batch):
        return np.full(len(batch), 0.9, np.float32), None


network = {"engine": Network()}
p = ModelBundle(folder, card, network).predict(np.zeros((2, 8, 8), np.float32))
assert p.shape == (2,) and 0.8 < p[0] < 0.9, p  # softened by the temperature
print(sorted({name.split(".")[0] for name in sys.modules} & {"sklearn", "scipy", "tensorflow", "keras"}))
"""


def test_a_calibrated_prediction_loads_neither_scikit_learn_nor_scipy() -> None:
    """The temperature is three lines of numpy: a worker's path to a probability imports no scikit-learn
    or SciPy (0.8 s of imports); TensorFlow comes only with the network itself."""
    done = subprocess.run([sys.executable, "-c", _PREDICT_ALONE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no model bundle at .*PNEUMOSCAN_MODEL"):
        load_bundle(tmp_path / "nothing-here")


def test_incomplete_card(tiny_bundle: Any, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, copy)
    card = json.loads((copy / CARD_FILE).read_text())
    del card["threshold"]
    (copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="unreadable or incomplete"):
        load_bundle(copy)
    (copy / CARD_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable or incomplete"):
        load_bundle(copy)


def test_verify_detects_a_changed_model_file(tiny_bundle: Any, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, copy)
    assert load_bundle(copy, verify=True).version == "tiny-test-1"
    with (copy / MODEL_FILE).open("ab") as fh:
        fh.write(b"\0")
    load_bundle(copy)  # without verify the card alone is read
    with pytest.raises(BundleError, match="does not match the sha256"):
        load_bundle(copy, verify=True)
