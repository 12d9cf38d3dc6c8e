"""The site-calibrated protocol: a random 20% of the test split plays a site's reviewed cases.

python -m bench.site_calibration DATA_DIR [--bundle DIR] [--draws 20] [--fraction 0.2] [--target-sensitivity 0.95]

For each of ``--draws`` fixed seeds, the threshold is fitted on the drawn cases exactly as
`pneumoscan calibrate --from-reviews` does (models.calibrate.site_threshold), and the other cases are
scored at it. Prints mean +- sd of the figures, and those of the out-of-the-box threshold on the same
held-out parts. This is a report on a model already chosen: it never feeds training or selection.
Writes bench/results/site_calibration.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from pneumoscan.config import SHIPPED_MODEL_DIR, Settings
from pneumoscan.models import metrics
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.calibrate import site_threshold
from pneumoscan.models.evaluate import score_split

KEYS = ("accuracy", "sensitivity", "specificity", "f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--bundle", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--split", default="test")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "site_calibration.json")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, verify=True)
    _, labels, scores = score_split(bundle, args.data_dir, args.split, Settings(patient_salt="bench").decode_policy)
    site: dict[str, list[float]] = {k: [] for k in (*KEYS, "threshold")}
    shipped: dict[str, list[float]] = {k: [] for k in KEYS}
    for seed in range(args.draws):
        order = np.random.default_rng(seed).permutation(len(labels))
        cut = round(args.fraction * len(labels))
        reviewed, held_out = order[:cut], order[cut:]
        threshold, _ = site_threshold(labels[reviewed], scores[reviewed], args.target_sensitivity, min_per_class=1)
        at_site = metrics.summarize(labels[held_out], scores[held_out], threshold)
        at_card = metrics.summarize(labels[held_out], scores[held_out], bundle.threshold)
        site["threshold"].append(threshold)
        for key in KEYS:
            site[key].append(at_site[key])
            shipped[key].append(at_card[key])
    summary = {
        "model_version": bundle.version, "n": len(labels), "draws": args.draws, "fraction": args.fraction,
        "target_sensitivity": args.target_sensitivity, "card_threshold": bundle.threshold,
        "site": {k: {"mean": statistics.mean(v), "sd": statistics.stdev(v)} for k, v in site.items()},
        "out_of_the_box": {k: {"mean": statistics.mean(v), "sd": statistics.stdev(v)} for k, v in shipped.items()},
    }
    print(f"{bundle.version}: {args.draws} draws of {args.fraction:.0%} of {args.split} (n={len(labels)}) as reviews, "
          f"target sensitivity {args.target_sensitivity}")
    print(f"{'':<14}{'site-calibrated':>22}{'card threshold':>22}")
    for key in KEYS:
        s, c = summary["site"][key], summary["out_of_the_box"][key]
        print(f"{key:<14}{s['mean']:>14.4f} ± {s['sd']:.4f}{c['mean']:>14.4f} ± {c['sd']:.4f}")
    t = summary["site"]["threshold"]
    print(f"threshold      {t['mean']:.4f} ± {t['sd']:.4f} (card {bundle.threshold:.4f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
