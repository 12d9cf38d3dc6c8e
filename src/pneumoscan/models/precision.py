"""`pneumoscan model check`: a faster precision against fp32 TensorFlow on the validation split, by the written gate.

The gate (docs/model-eval/precision-gate.md, committed before the first check): label agreement at the card's
threshold >= 99.5%, mean |dp| <= 0.005, 99th percentile |dp| <= 0.04, the maximum reported. The figures are
written to the per-machine model cache, where ``engine.open_engine`` looks before allowing the precision.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.config import DecodePolicy
from pneumoscan.models.bundle import ModelBundle
from pneumoscan.models.dataset import Example, labels_of, load_images, train_validation
from pneumoscan.models.engine import (
    EngineConfig,
    EngineError,
    check_record_path,
    int8_dir,
    open_engine,
    openvino_version,
)
from pneumoscan.models.temperature import apply_temperature

__all__ = ["GATE", "agreement", "bundle_split", "cpu_name", "run_check"]

GATE = {"label_agreement_min": 0.995, "mean_abs_dp_max": 0.005, "p99_abs_dp_max": 0.04}


def cpu_name() -> str:
    """The CPU's model name (lscpu's), for every figure measured on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> dict[str, Any]:
    """How far ``candidate`` probabilities are from ``reference`` ones, and whether the gate holds."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or reference.size == 0:
        raise ValueError(f"cannot compare {reference.shape} with {candidate.shape}")
    dp = np.abs(reference - candidate)
    figures = {
        "images": int(reference.size),
        "label_agreement": float(np.mean((reference >= threshold) == (candidate >= threshold))),
        "labels_flipped": int(np.sum((reference >= threshold) != (candidate >= threshold))),
        "mean_abs_dp": float(dp.mean()), "p99_abs_dp": float(np.percentile(dp, 99)), "max_abs_dp": float(dp.max()),
    }
    figures["passed"] = bool(figures["label_agreement"] >= GATE["label_agreement_min"]
                             and figures["mean_abs_dp"] <= GATE["mean_abs_dp_max"]
                             and figures["p99_abs_dp"] <= GATE["p99_abs_dp_max"])
    return figures


def bundle_split(bundle: ModelBundle, data_dir: Path) -> tuple[list[Example], list[Example]]:
    """The (train, validation) examples of ``data_dir/train`` carved by patient as the bundle's card says."""
    _, fraction, seed = bundle.card.validation_split
    if fraction is None or seed is None:
        raise EngineError(f"the card of {bundle.version} does not say how its validation split was carved")
    return train_validation(data_dir, fraction, seed)


def validation_images(bundle: ModelBundle, data_dir: Path, policy: DecodePolicy) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's own validation split of ``data_dir`` (train carved by patient as its card says), decoded
    as the pipeline decodes, and its labels. The test split is never read."""
    _, val = bundle_split(bundle, data_dir)
    if not val:
        raise EngineError(f"no validation images under {data_dir}/train")
    return load_images(val, bundle.input_size, policy, exact=True, workers=os.cpu_count() or 2), labels_of(val)


def run_check(bundle: ModelBundle, data_dir: Path, precision: str, config: EngineConfig, policy: DecodePolicy,
              *, batch: int = 32, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Compare ``precision`` on OpenVINO with fp32 TensorFlow on the validation split; record and return it.

    fp32 may be checked too (it is allowed regardless): its record is the agreement figure of the engine.
    int8 is first quantized (once per machine), calibrated on the train part of the same split.
    """
    if config.cache_dir is None:
        raise EngineError("no model cache folder to record the check in (PNEUMOSCAN_MODEL_CACHE_DIR)")
    if precision == "int8":  # quantized first, on train images only (models.quantize)
        from pneumoscan.models.quantize import quantize_int8

        quantize_int8(bundle, data_dir, config.cache_dir, policy)
    images, _ = validation_images(bundle, data_dir, policy)
    candidate = open_engine(bundle.model_sha256, bundle.input_size, EngineConfig("openvino", precision,
                            config.cache_dir, config.threads), lambda: bundle.model, unchecked=True)
    reference = open_engine(bundle.model_sha256, bundle.input_size, EngineConfig("tensorflow"), lambda: bundle.model)
    ref, cand = [], []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch, ..., None]
        ref.append(reference(chunk))
        cand.append(candidate(chunk))
        if on_batch is not None:
            on_batch(len(chunk))
    t = bundle.temperature
    figures = agreement(apply_temperature(np.concatenate(ref), t), apply_temperature(np.concatenate(cand), t),
                        bundle.threshold)
    record = {"model": bundle.version, "model_sha256": bundle.model_sha256, "engine": "openvino",
              "openvino": openvino_version(), "precision": precision, "reference": "tensorflow fp32",
              "split": "validation (train carved by patient as the card says; test never read)",
              "cpu": cpu_name(), "checked_at": datetime.now(UTC).isoformat(timespec="seconds"), "gate": GATE,
              **figures}
    if precision == "int8":
        record["quantization"] = json.loads((int8_dir(config.cache_dir, bundle.model_sha256)
                                             / "calibration.json").read_text())
    path = check_record_path(config.cache_dir, bundle.model_sha256, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return record
