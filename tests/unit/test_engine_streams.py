"""The OpenVINO engine in throughput mode (issue 30, the pipeline keeps up): a batch split over streams gives the
figures of one request with every thread, for every batch size, probabilities and features alike."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.config import SHIPPED_MODEL_DIR, Settings
from pneumoscan.imaging import decode
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.engine import EngineConfig, OpenVINOEngine, ir_dir, open_engine

if importlib.util.find_spec("openvino") is None:
    pytest.skip("openvino is not installed", allow_module_level=True)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "test_images"


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[OpenVINOEngine, OpenVINOEngine, np.ndarray]:
    policy = Settings(data_dir=tmp_path_factory.mktemp("data"), patient_salt="test").decode_policy
    files = sorted(p for p in FIXTURES.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    batch = np.stack([decode(p.read_bytes(), (224, 224), policy).pixels for p in files])[..., None]
    bundle = load_bundle(SHIPPED_MODEL_DIR)
    cache = tmp_path_factory.mktemp("model-cache")
    split = open_engine(bundle.model_sha256, bundle.input_size, EngineConfig("openvino", "fp32", cache, streams=2),
                        lambda: bundle.model)
    assert isinstance(split, OpenVINOEngine)
    whole = OpenVINOEngine(ir_dir(cache, bundle.model_sha256) / "model.xml", "fp32", streams=1)
    return split, whole, batch


@pytest.mark.slow
def test_a_batch_split_over_streams_gives_what_one_request_gives(
        engines: tuple[OpenVINOEngine, OpenVINOEngine, np.ndarray]) -> None:
    split, whole, batch = engines
    assert split.streams == 2 and whole.streams == 1
    for n in (1, 2, 3, 7, len(batch)):
        p_split, f_split = split.run(batch[:n])
        p_whole, f_whole = whole.run(batch[:n])
        assert p_split.shape == (n,) and f_split is not None and f_whole is not None
        assert f_split.shape == f_whole.shape and f_split.shape[0] == n
        np.testing.assert_allclose(p_split, p_whole, rtol=0, atol=1e-6)
        np.testing.assert_allclose(f_split, f_whole, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(split(batch[:n]), p_split)  # and the same again: requests are reused


def test_settings_give_the_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMOSCAN_ENGINE_STREAMS", "1")
    assert EngineConfig.from_settings(Settings(data_dir=tmp_path, patient_salt="t")).streams == 1
    monkeypatch.delenv("PNEUMOSCAN_ENGINE_STREAMS")
    assert EngineConfig.from_settings(Settings(data_dir=tmp_path, patient_salt="t")).streams == 0
