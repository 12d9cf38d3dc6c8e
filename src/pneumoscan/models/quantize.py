"""int8 (issue 30): the cached OpenVINO IR quantized after training with NNCF, calibrated on train images only.

Calibration reads the train part of the bundle's own patient-wise split of ``DATA/train`` (the card's fraction
and seed): never the validation images the precision check compares on, never the test split. The quantized IR
is cached per machine beside the full-precision one (``engine.int8_dir``: model sha256, engine, precision,
OpenVINO version), with the record of its calibration; it is used only once `pneumoscan model check DATA
--precision int8` passed (docs/model-eval/precision-gate.md). NNCF is the ``int8`` extra, needed only here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pneumoscan.config import DecodePolicy
from pneumoscan.models.bundle import ModelBundle
from pneumoscan.models.dataset import Example, load_images
from pneumoscan.models.engine import EngineError, _openvino, int8_dir, openvino_ir, save_ir
from pneumoscan.models.precision import bundle_split

__all__ = ["CALIBRATION_IMAGES", "calibration_examples", "quantize_int8"]

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300  # NNCF's default subset size; every 15th train image of the shipped model's split


def calibration_examples(bundle: ModelBundle, data_dir: Path, count: int = CALIBRATION_IMAGES) -> list[Example]:
    """``count`` train images spread evenly over the train part of the bundle's split (sorted, so reproducible)."""
    train, _ = bundle_split(bundle, data_dir)
    if not train:
        raise EngineError(f"no train images under {data_dir}/train to calibrate int8 on")
    return train[:: max(1, len(train) // count)][:count]


def _nncf() -> Any:
    _openvino()  # first: NNCF then finds no telemetry package either, and sends nothing
    try:
        import nncf
    except ImportError:
        raise EngineError("precision int8 needs NNCF to quantize the model: `pip install 'pneumoscan[int8]'`, "
                          "or keep PNEUMOSCAN_PRECISION=fp32") from None
    return nncf


def quantize_int8(bundle: ModelBundle, data_dir: Path, cache_dir: Path, policy: DecodePolicy, *,
                  images: int = CALIBRATION_IMAGES) -> Path:
    """The int8 IR of ``bundle`` in ``cache_dir``, quantized now on ``images`` of ``data_dir``'s train split if
    it is not there yet.

    Returns the path of its .xml file.
    """
    dest = int8_dir(cache_dir, bundle.model_sha256)
    if (dest / "model.xml").is_file():
        return dest / "model.xml"
    nncf = _nncf()
    fp32 = openvino_ir(bundle.model_sha256, bundle.input_size, cache_dir, lambda: bundle.model)
    examples = calibration_examples(bundle, data_dir, images)
    pixels = load_images(examples, bundle.input_size, policy, exact=True, workers=os.cpu_count() or 2)[..., None]
    log.info("quantizing %s to int8 on %d train images", bundle.version, len(pixels))
    model = _openvino().Core().read_model(str(fp32))
    batches = [pixels[i:i + 10] for i in range(0, len(pixels), 10)]
    kept = _kept_in_f32(model)
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(pixels),
                              ignored_scope=nncf.IgnoredScope(names=kept))
    digest = hashlib.sha256("\n".join(str(e.path.relative_to(data_dir)) for e in examples).encode()).hexdigest()
    record = {"model": bundle.version, "model_sha256": bundle.model_sha256, "nncf": _version("nncf"),
              "openvino": _version("openvino"), "kept_f32": kept,
              "method": "nncf.quantize, preset performance, fast bias correction; the stem convolution and the "
                        "classifier kept in f32",
              "calibration": {"split": "train part of the card's patient-wise split of DATA/train (never "
                                       "validation, never test)", "images": len(examples),
                              "files_sha256": digest}}
    return save_ir(quantized, dest, {"calibration.json": json.dumps(record, indent=2) + "\n"})


def _kept_in_f32(model: Any) -> list[str]:
    """The layers left unquantized: the first convolution (the stem, on the raw pixels) and the last weighted
    layer (the classifier). Chosen on train images outside the calibration set, before the validation check:
    quantizing everything put the 99th percentile |dp| at 0.042 to 0.057 there, keeping these two at 0.038."""
    weighted = [op.get_friendly_name() for op in model.get_ordered_ops()
                if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")]
    return [weighted[0], weighted[-1]] if weighted else []


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
