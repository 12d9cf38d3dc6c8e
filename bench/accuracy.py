"""Reproduce the shipped (or given) bundle's test figures: python -m bench.accuracy DATA_DIR [--bundle DIR].

Runs the official test split through the same decoder as the worker, prints the metrics next to
the ones recorded in the model card, and exits non-zero if they disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from pneumoscan.config import SHIPPED_MODEL_DIR, Settings
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.evaluate import evaluate

KEYS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "pr_auc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--bundle", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, verify=True)
    with tempfile.TemporaryDirectory() as out:
        report = evaluate(bundle, args.data_dir, args.split, Path(out), Settings(patient_salt="bench").decode_policy)
    recorded = bundle.card.test_metrics or {}
    print(f"{bundle.version} on {args.data_dir}/{args.split} (n={report['n']}, threshold {report['threshold']:.4f})")
    print(f"{'metric':<12} {'measured':>9} {'card':>9}")
    mismatch = False
    for key in KEYS:
        card_value = recorded.get(key)
        mismatch |= card_value is not None and abs(card_value - report[key]) > 1e-4
        print(f"{key:<12} {report[key]:9.4f} {card_value if card_value is None else f'{card_value:9.4f}':>9}")
    print("confusion [[TN, FP], [FN, TP]]:", json.dumps(report["confusion_matrix"]["rows_true_cols_predicted"]))
    if mismatch:
        print("MISMATCH: measured figures differ from the card", file=sys.stderr)
    return int(mismatch)


if __name__ == "__main__":
    sys.exit(main())
