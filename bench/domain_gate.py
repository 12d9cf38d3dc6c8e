"""The domain gate's figures: the share of validation it marks, the scores of inputs that are not pediatric chest
films, and what scoring costs beside the model.

The validation split is the card's own (train carved by patient). The test split is not read here: the gate's
one test read is recorded in the card (`pneumoscan model domain-check DATA --split test --update-card`, after
docs/model-eval/domain-gate.md was committed), and this script copies that figure into its record.

    python -m bench.domain_gate [DATA_DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DATASET, add_output_arg, decode_policy, machine, median, write_result
from pneumoscan.config import SHIPPED_MODEL_DIR
from pneumoscan.imaging import decode
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.dataset import load_images
from pneumoscan.models.engine import EngineConfig
from pneumoscan.models.precision import bundle_split


def _outsiders() -> dict[str, np.ndarray]:
    import matplotlib
    from pydicom.data import get_testdata_file

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    files = {"adult chest radiograph (pydicom RG1_UNCI.dcm)": Path(str(get_testdata_file("RG1_UNCI.dcm"))),
             **{f"photograph {p.name}": p for p in sorted(sample.glob("*.jpg")) + sorted(sample.glob("*.png"))}}
    images = {name: decode(path.read_bytes(), (224, 224), decode_policy()).pixels for name, path in files.items()}
    rng = np.random.default_rng(0)
    images.update({"synthetic noise": rng.random((224, 224), dtype=np.float32),
                   "synthetic flat grey": np.full((224, 224), 0.5, np.float32),
                   "synthetic gradient": np.tile(np.linspace(0, 1, 224, dtype=np.float32), (224, 1))})
    return images


def _bf16_shift(bundle: Any, pixels: np.ndarray, fp32_scores: np.ndarray, cache: Path) -> dict[str, Any] | None:
    """The validation split scored on features computed in bf16, against the fp32 scores the threshold was set on."""
    from pneumoscan.models.engine import cpu_has_bf16, open_engine

    if not cpu_has_bf16():
        return None
    gate = bundle.domain_gate
    engine = open_engine(bundle.model_sha256, bundle.input_size, EngineConfig("openvino", "bf16", cache),
                         lambda: bundle.model, unchecked=True)  # a measurement, not a permission to run
    scores = np.concatenate([gate.scores(engine.run(pixels[i:i + 32, ..., None])[1])
                             for i in range(0, len(pixels), 32)])
    diff = np.abs(scores - fp32_scores)
    return {"n": len(scores), "marked": int((scores > gate.threshold).sum()),
            "share": float(np.mean(scores > gate.threshold)), "median_abs_diff": float(np.median(diff)),
            "max_abs_diff": float(diff.max()),
            "verdicts_changed": int(np.sum((scores > gate.threshold) != (fp32_scores > gate.threshold)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=DATASET)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/pneumoscan-bench/model-cache"))
    add_output_arg(parser, "domain_gate")
    args = parser.parse_args()
    info = machine()
    bundle = load_bundle(SHIPPED_MODEL_DIR, runtime=EngineConfig("openvino", "fp32", args.cache))
    gate, card = bundle.domain_gate, bundle.card.domain
    assert gate is not None and card is not None, "the shipped model has no domain gate"
    _, val = bundle_split(bundle, args.data_dir)
    pixels = load_images(val, bundle.input_size, decode_policy(), exact=True)
    model_s, gate_s, scores = [], [], []
    for start in range(0, len(pixels), 32):
        batch = pixels[start:start + 32, ..., None]
        t0 = time.perf_counter()
        _, features = bundle.engine.run(batch)
        t1 = time.perf_counter()
        assert features is not None
        scores.append(gate.scores(features))
        gate_s.append(time.perf_counter() - t1)
        model_s.append(t1 - t0)
    val_scores = np.concatenate(scores)
    bf16 = _bf16_shift(bundle, pixels, val_scores, args.cache)
    outsiders = _outsiders()
    _, outsider_features = bundle.engine.run(np.stack(list(outsiders.values()))[..., None])
    assert outsider_features is not None
    outsider_scores = dict(zip(outsiders, gate.scores(outsider_features).round(1).tolist(), strict=True))
    record: dict[str, Any] = {
        "machine": info, "model": bundle.version, "threshold": gate.threshold,
        "validation": {"n": len(val_scores), "marked": int((val_scores > gate.threshold).sum()),
                       "share": float(np.mean(val_scores > gate.threshold)),
                       "score_median": float(np.median(val_scores))},
        "test_from_card": {"n": card.get("test_n"), "share": card.get("test_marked")},
        "validation_bf16": bf16,
        "outsiders": {name: {"score": s, "marked": s > gate.threshold} for name, s in outsider_scores.items()},
        "cost_per_batch_of_32_ms": {"model": 1e3 * median(model_s), "gate": 1e3 * median(gate_s),
                                    "gate_vs_model": median(gate_s) / median(model_s)},
    }
    v = record["validation"]
    print(f"{bundle.version} domain gate, threshold {gate.threshold:.1f}, {info['cpu_model']}")
    print(f"  validation: {v['marked']} of {v['n']} marked ({v['share']:.1%}); test (one read, from the card): "
          f"{card.get('test_marked', float('nan')):.1%} of {card.get('test_n')}")
    if bf16:
        print(f"  validation scored in bf16 (the threshold was fitted in fp32): {bf16['marked']} marked "
              f"({bf16['share']:.1%}); |score difference| median {bf16['median_abs_diff']:.2f}, max "
              f"{bf16['max_abs_diff']:.2f}; {bf16['verdicts_changed']} verdicts changed")
    for name, s in outsider_scores.items():
        print(f"  {name:<52} {s:7.1f}  {'out' if s > gate.threshold else 'IN'}")
    cost = record["cost_per_batch_of_32_ms"]
    print(f"  cost per batch of 32: model {cost['model']:.0f} ms, gate {cost['gate']:.1f} ms "
          f"({cost['gate_vs_model']:.1%} of the model)")
    write_result("domain_gate", record, args.out)


if __name__ == "__main__":
    main()
