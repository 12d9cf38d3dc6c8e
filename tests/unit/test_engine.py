"""The inference engines: OpenVINO in fp32 agrees with TensorFlow on real radiographs, its conversion is cached
per machine so a process with the cache never imports TensorFlow, and a precision nobody checked is refused."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pneumoscan.config import SHIPPED_MODEL_DIR, Settings
from pneumoscan.imaging import decode
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.engine import EngineConfig, EngineError, check_record_path, ir_dir, resolve_engine

if importlib.util.find_spec("openvino") is None:  # not imported here: the engine imports it without telemetry
    pytest.skip("openvino is not installed", allow_module_level=True)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "test_images"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def real_batch(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The 20 real chest radiographs of the fixtures, decoded as the pipeline decodes them."""
    policy = Settings(data_dir=tmp_path_factory.mktemp("data"), patient_salt="test").decode_policy
    files = sorted(p for p in FIXTURES.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    assert len(files) == 20
    return np.stack([decode(p.read_bytes(), (224, 224), policy).pixels for p in files])


@pytest.mark.slow
def test_openvino_fp32_agrees_with_tensorflow_within_1e4_on_real_images(cache: Path, real_batch: np.ndarray) -> None:
    reference = load_bundle(SHIPPED_MODEL_DIR)
    fast = load_bundle(SHIPPED_MODEL_DIR, runtime=EngineConfig("openvino", "fp32", cache))
    tf_p, ov_p = reference.predict(real_batch), fast.predict(real_batch)
    assert (reference.engine.name, fast.engine.name, fast.engine.precision) == ("tensorflow", "openvino", "fp32")
    assert np.abs(tf_p - ov_p).max() <= 1e-4, np.abs(tf_p - ov_p).max()
    assert ((tf_p >= reference.threshold) == (ov_p >= fast.threshold)).all()
    assert 0.05 < tf_p.mean() < 0.95  # real predictions, not a constant
    # Uncalibrated too, one at a time and in an odd-sized batch (the converted model's batch axis is dynamic).
    np.testing.assert_allclose(fast.predict(real_batch[:3], calibrated=False),
                               reference.predict(real_batch[:3], calibrated=False), atol=1e-4)
    one = np.concatenate([fast.predict(x[None]) for x in real_batch[:2]])
    np.testing.assert_allclose(one, ov_p[:2], atol=1e-5)
    assert fast.predict(np.zeros((0, 224, 224), np.float32)).shape == (0,)
    # The second output, the penultimate features the domain gate scores, agrees too.
    (_, tf_f), (_, ov_f) = reference.engine.run(real_batch[..., None]), fast.engine.run(real_batch[..., None])
    assert tf_f is not None and ov_f is not None and tf_f.shape == (len(real_batch), 1280)
    np.testing.assert_allclose(ov_f, tf_f, atol=1e-4)
    assert tf_f.std(axis=0).mean() > 1e-3  # features that vary between images
    converted = list(ir_dir(cache, fast.model_sha256).glob("model.*"))
    assert sorted(p.name for p in converted) == ["model.bin", "model.xml"]
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


_FROM_CACHE = """
import sys, time
from pathlib import Path
import numpy as np
start = time.perf_counter()
from pneumoscan.config import SHIPPED_MODEL_DIR
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.engine import EngineConfig
bundle = load_bundle(SHIPPED_MODEL_DIR, runtime=EngineConfig("auto", "fp32", Path(sys.argv[1])))
p = bundle.predict(np.load(sys.argv[2]))
print(bundle.engine.name, sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras"}),
      sys.modules.get("openvino_telemetry"), file=sys.stderr)
np.save(sys.argv[3], p)
"""


def test_a_process_with_the_cache_never_imports_tensorflow(cache: Path, real_batch: np.ndarray,
                                                           tmp_path: Path) -> None:
    load_bundle(SHIPPED_MODEL_DIR, runtime=EngineConfig("openvino", "fp32", cache)).load()  # fills the cache
    np.save(tmp_path / "batch.npy", real_batch[:4])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMOSCAN_")}
    done = subprocess.run([sys.executable, "-c", _FROM_CACHE, str(cache), str(tmp_path / "batch.npy"),
                           str(tmp_path / "p.npy")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    # No TensorFlow, and OpenVINO's usage telemetry (events sent to Google Analytics) never loaded.
    assert done.stderr.strip().splitlines()[-1] == "openvino [] None"
    expected = load_bundle(SHIPPED_MODEL_DIR).predict(real_batch[:4])
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-4)


def test_a_corrupt_cache_entry_is_an_error_not_a_wrong_answer(tmp_path: Path, cache: Path) -> None:
    bundle = load_bundle(SHIPPED_MODEL_DIR, runtime=EngineConfig("openvino", "fp32", tmp_path))
    entry = ir_dir(tmp_path, bundle.model_sha256)
    entry.mkdir()
    (entry / "model.xml").write_text("<net>not a model")
    with pytest.raises(Exception):  # noqa: B017  (OpenVINO's own parse error)
        bundle.load()


def test_auto_is_openvino_on_a_cpu_machine_and_names_are_checked() -> None:
    assert resolve_engine("auto") == ("tensorflow" if Path("/proc/driver/nvidia/gpus").is_dir() else "openvino")
    assert resolve_engine("tensorflow") == "tensorflow"
    with pytest.raises(EngineError, match="unknown engine 'onnx'"):
        resolve_engine("onnx")


@pytest.mark.parametrize("record", [None, {"passed": False}, "not json"])
def test_an_unchecked_precision_is_refused_in_one_line(tmp_path: Path, record: Any) -> None:
    bundle = load_bundle(SHIPPED_MODEL_DIR, runtime=EngineConfig("openvino", "bf16", tmp_path))
    if record is not None:
        path = check_record_path(tmp_path, bundle.model_sha256, "bf16")
        path.parent.mkdir(parents=True)
        path.write_text(record if isinstance(record, str) else json.dumps(record))
    with pytest.raises(EngineError) as caught:
        bundle.predict(np.zeros((1, 224, 224), np.float32))
    message = str(caught.value)
    assert "\n" not in message
    assert ("has not passed `pneumoscan model check DATA --precision bf16`" in message
            or "needs a CPU with BF16" in message)
    assert not any(p.name.endswith("-features") for p in tmp_path.iterdir())  # refused before any conversion


def test_tensorflow_runs_fp32_only(tmp_path: Path) -> None:
    bundle = load_bundle(SHIPPED_MODEL_DIR, runtime=EngineConfig("tensorflow", "bf16", tmp_path))
    with pytest.raises(EngineError, match="needs PNEUMOSCAN_ENGINE=openvino"):
        bundle.load()


def test_settings_choose_the_engine(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, patient_salt="x", engine="openvino", precision="bf16", engine_threads=2)
    assert EngineConfig.from_settings(settings) == EngineConfig("openvino", "bf16", tmp_path / "model-cache", 2)
    assert Settings(data_dir=tmp_path, patient_salt="x").engine == "auto"
    assert Settings(data_dir=tmp_path, patient_salt="x").precision == "fp32"
    with pytest.raises(ValueError, match="engine"):
        Settings(data_dir=tmp_path, patient_salt="x", engine="onnx")


@pytest.mark.slow
def test_the_pipeline_on_openvino_stores_what_tensorflow_would(tmp_path: Path, cache: Path) -> None:
    """classify_paths with the engine the settings pick (auto: OpenVINO here) on the 20 real fixtures: the
    same labels as TensorFlow and probabilities within 1e-4, each stored once."""
    from pneumoscan.db import open_database
    from pneumoscan.pipeline import classify_paths

    paths = sorted(str(p) for p in FIXTURES.rglob("*.jpeg"))
    runs = {}
    for name, runtime in (("tensorflow", EngineConfig()), ("openvino", EngineConfig("openvino", "fp32", cache))):
        settings = Settings(data_dir=tmp_path / name, patient_salt="s")
        bundle = load_bundle(settings.model_path, runtime=runtime)
        runs[name] = classify_paths(paths, bundle=bundle, sessions=open_database(settings.sqlalchemy_url),
                                    settings=settings)
        assert bundle.engine.name == name
    for tf_result, ov_result in zip(runs["tensorflow"], runs["openvino"], strict=True):
        assert ov_result.status == tf_result.status == "done"
        assert ov_result.label == tf_result.label
        assert abs((ov_result.probability or 0) - (tf_result.probability or 0)) <= 1e-4
