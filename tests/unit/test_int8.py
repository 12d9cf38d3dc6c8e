"""int8 (issue 30): quantized with NNCF on train images only, cached per machine with its calibration record, and
refused until `pneumoscan model check --precision int8` passed."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.config import SHIPPED_MODEL_DIR, Settings
from pneumoscan.imaging import decode
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.engine import EngineConfig, EngineError, OpenVINOEngine, int8_dir, open_engine
from pneumoscan.models.precision import agreement

if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
    pytest.skip("openvino and nncf (the int8 extra) are not both installed", allow_module_level=True)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "test_images"


def _data(root: Path) -> Path:
    """A data folder whose train split holds the 20 real fixture radiographs (no test split at all)."""
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "train" / label).mkdir(parents=True)
        for path in sorted((FIXTURES / label).iterdir()):
            if path.suffix.lower() in (".jpeg", ".jpg", ".png"):
                shutil.copy(path, root / "train" / label / path.name)
    return root


@pytest.mark.slow
def test_int8_is_calibrated_on_train_images_cached_and_refused_until_checked(tmp_path: Path) -> None:
    from pneumoscan.models.quantize import calibration_examples, quantize_int8

    data = _data(tmp_path / "data")
    cache = tmp_path / "model-cache"
    settings = Settings(data_dir=tmp_path / "pneumoscan", patient_salt="test")
    bundle = load_bundle(SHIPPED_MODEL_DIR)
    _, fraction, seed = bundle.card.validation_split
    examples = calibration_examples(bundle, data, 12)
    from pneumoscan.models.dataset import train_validation

    train, validation = train_validation(data, fraction or 0.15, seed or 0)
    assert examples and {e.path for e in examples} <= {e.path for e in train}  # never a validation image
    assert not {e.path for e in examples} & {e.path for e in validation}

    config = EngineConfig("openvino", "int8", cache)
    with pytest.raises(EngineError, match="model check DATA --precision int8"):  # neither quantized nor checked
        open_engine(bundle.model_sha256, bundle.input_size, config, lambda: bundle.model)

    xml = quantize_int8(bundle, data, cache, settings.decode_policy, images=12)
    assert xml.parent == int8_dir(cache, bundle.model_sha256)
    record = json.loads((xml.parent / "calibration.json").read_text())
    assert record["calibration"]["images"] == len(examples) and "never test" in record["calibration"]["split"]
    assert quantize_int8(bundle, data, cache, settings.decode_policy, images=12) == xml  # cached: not redone

    with pytest.raises(EngineError, match="has not passed"):  # quantized, but not checked
        open_engine(bundle.model_sha256, bundle.input_size, config, lambda: bundle.model)
    engine = open_engine(bundle.model_sha256, bundle.input_size, config, lambda: bundle.model, unchecked=True)
    assert isinstance(engine, OpenVINOEngine) and engine.precision == "int8"

    files = sorted(p for p in FIXTURES.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    batch = np.stack([decode(p.read_bytes(), (224, 224), settings.decode_policy).pixels for p in files])[..., None]
    fp32 = open_engine(bundle.model_sha256, bundle.input_size, EngineConfig("openvino", "fp32", cache),
                       lambda: bundle.model)
    probabilities, features = engine.run(batch)
    assert features is not None and features.shape[0] == len(batch)
    figures = agreement(fp32(batch), probabilities, bundle.threshold)
    assert figures["mean_abs_dp"] < 0.05  # quantized, so not exact: only a sanity bound; the gate is the check's
