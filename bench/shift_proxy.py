"""Which training recipe survives a change of image source? A proxy that reads only the train split.

The shipped model is near perfect on its validation split (AUC 0.998) yet loses a third of the test
normals, so validation cannot choose between recipes. The train NORMAL folder holds two sources
(``IM-*`` and ``NORMAL2-IM-*`` file names). This script trains a recipe with one source held out
entirely, chooses the threshold on the usual patient-wise validation split, and then measures the
held-out normals: the share called NORMAL at that threshold (specificity) and their ROC AUC against
the validation PNEUMONIA images. The test split is never read.

    python -m bench.shift_proxy DATA_DIR --hold-out NORMAL2 --recipe baseline --recipe robust
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import DATASET, RESULTS_DIR, decode_policy
from pneumoscan.models import metrics
from pneumoscan.models.bundle import BundleError, ModelBundle, load_bundle
from pneumoscan.models.dataset import labels_of, list_split, load_images, train_validation
from pneumoscan.models.recipe import TrainConfig
from pneumoscan.models.train import train

RECIPES = {
    "baseline": {},
    "robust": {"mixup": 0.2, "label_smoothing": 0.1},
}


def _source(name: str) -> str:
    return "NORMAL2" if name.upper().startswith("NORMAL2-") else "IM"


def _trained(layout: Path, out: Path, config: TrainConfig) -> tuple[ModelBundle, float]:
    """Train ``config`` into ``out``, or reuse the bundle a previous run left there."""
    try:
        return load_bundle(out), 0.0
    except BundleError:
        started = time.perf_counter()
        bundle = train(layout, out, config, decode_policy())
        return bundle, (time.perf_counter() - started) / 60


def _row(recipe: str, model: str, args: argparse.Namespace, y_val: np.ndarray, labels: np.ndarray,
         p_val: np.ndarray, p_held: np.ndarray, p_pos: np.ndarray) -> dict[str, object]:
    """The proxy figures of one model's scores, with the threshold chosen on validation by the usual rule."""
    threshold = metrics.choose_threshold(y_val, p_val, TrainConfig().min_sensitivity)
    val = metrics.summarize(y_val, p_val, threshold)
    return {
        "recipe": recipe, "model": model, "config": RECIPES[recipe], "hold_out": args.hold_out,
        "epochs": args.epochs, "threshold": threshold,
        "validation_roc_auc": val["roc_auc"], "validation_specificity": val["specificity"],
        "held_out_normals": len(p_held),
        "held_out_specificity": float(np.mean(p_held < threshold)),
        "held_out_roc_auc_vs_val_pneumonia": metrics.roc_auc(labels, np.r_[p_held, p_pos]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", type=Path, nargs="?", default=DATASET)
    parser.add_argument("--hold-out", choices=("NORMAL2", "IM"), default="NORMAL2")
    parser.add_argument("--recipe", choices=tuple(RECIPES), action="append")
    parser.add_argument("--input-size", type=int, nargs="+", default=[112],
                        help="one or more input sizes; with several, their ensemble is measured too")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("runs/shift-proxy"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "shift_proxy.json",
                        help="write the rows here [default: bench/results/shift_proxy.json, the current figures]")
    args = parser.parse_args()

    layout = args.work / f"data-without-{args.hold_out}"
    held_out = [e for e in list_split(args.data_dir, "train") if e.label == 0 and _source(e.path.name) == args.hold_out]
    for example in list_split(args.data_dir, "train"):
        if example in held_out:
            continue
        link = layout / "train" / example.path.parent.name / example.path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(example.path.resolve())

    _, val = train_validation(layout, TrainConfig().val_fraction, TrainConfig().seed)
    y_val = labels_of(val)
    val_pneumonia = [e for e in val if e.label == 1]
    labels = np.r_[np.zeros(len(held_out), int), labels_of(val_pneumonia)]
    results = []
    for recipe in args.recipe or list(RECIPES):
        member_scores = []  # per input size: (validation scores, held-out scores, val-pneumonia scores)
        for size in args.input_size:
            bundle, minutes = _trained(layout, args.work / f"{recipe}-without-{args.hold_out}-{size}px",
                                       TrainConfig(input_size=size, epochs=args.epochs, version=f"proxy-{recipe}",
                                                   **RECIPES[recipe]))  # type: ignore[arg-type]
            scores = tuple(bundle.predict(load_images(group, size, decode_policy(), exact=True))
                           for group in (val, held_out, val_pneumonia))
            member_scores.append(scores)
            row = _row(recipe, f"{size}px", args, y_val, labels, *scores)
            results.append({**row, "minutes": round(minutes, 1)})
            print(json.dumps(results[-1]), flush=True)
        if len(member_scores) > 1:  # the ensemble averages its members' probabilities
            mean = [np.mean([m[i] for m in member_scores], axis=0) for i in range(3)]
            sizes = "+".join(f"{s}px" for s in args.input_size)
            results.append(_row(recipe, f"ensemble {sizes}", args, y_val, labels, *mean))
            print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
