"""Evaluation: a bundle on one labelled split, through the pipeline's own decoder, with metrics and plots."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.config import DecodePolicy
from pneumoscan.domain import LABELS
from pneumoscan.models import metrics
from pneumoscan.models.bundle import ModelBundle, write_card
from pneumoscan.models.calibrate import calibration_report
from pneumoscan.models.dataset import labels_of, list_split, load_images

log = logging.getLogger(__name__)


def score_split(bundle: ModelBundle, data_dir: Path, split: str, policy: DecodePolicy, *, batch_size: int = 64,
                on_batch: Callable[[int], None] | None = None) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(paths, labels, probabilities) of the bundle on ``data_dir/split``, decoded as the worker does."""
    examples = list_split(data_dir, split)
    scores = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        pixels = load_images(chunk, bundle.input_size, policy, exact=True)
        scores.append(bundle.predict(pixels))
        if on_batch is not None:
            on_batch(len(chunk))
    return [e.path for e in examples], labels_of(examples), np.concatenate(scores)


def evaluate(bundle: ModelBundle, data_dir: Path, split: str, out: Path, policy: DecodePolicy,
             on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score ``split`` at the bundle's threshold; write metrics.json, predictions.csv and PNG plots to ``out``."""
    paths, labels, scores = score_split(bundle, data_dir, split, policy, on_batch=on_batch)
    report = {
        "model_version": bundle.version,
        "data": data_dir.name,  # the dataset's name, as training records it: no machine's path
        "split": split,
        **metrics.summarize(labels, scores, bundle.threshold),
        **calibration_report(labels, scores),
        "calibration": metrics.calibration(labels, scores),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out / "predictions.csv").open("w") as fh:
        fh.write("path,label,probability\n")
        for path, label, score in zip(paths, labels, scores, strict=True):
            fh.write(f"{path.relative_to(data_dir)},{LABELS[label]},{float(score)!r}\n")
    _plots(labels, scores, report, out)
    return report


def store_test_metrics(bundle: ModelBundle, report: dict[str, Any]) -> None:
    """Record an evaluation in the bundle's card as ``test_metrics`` (the model file is untouched)."""
    write_card(bundle.path, bundle.card.with_test_metrics({k: v for k, v in report.items() if k != "calibration"}))


def _plots(labels: np.ndarray, scores: np.ndarray, report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    precision, recall = metrics.pr_curve(labels, scores)
    cal = report["calibration"]
    matrix = np.array(report["confusion_matrix"]["rows_true_cols_predicted"])
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    ax = axes[0, 0]
    ax.plot(fpr, tpr, label=f"AUC {report['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(loc="lower right")
    ax = axes[0, 1]
    ax.step(np.r_[0, recall], np.r_[1, precision], where="post", label=f"AP {report['pr_auc']:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    ax = axes[1, 0]
    ax.imshow(matrix, cmap="Blues")
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, str(value), ha="center", va="center", fontsize=14,
                color="white" if value > matrix.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=LABELS, yticklabels=LABELS,
           xlabel="predicted", ylabel="true", title=f"Confusion matrix at threshold {report['threshold']:.3f}")
    ax = axes[1, 1]
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    ax.plot(cal["mean_predicted"], cal["fraction_positive"], marker="o")
    ax.set(xlabel="mean predicted probability", ylabel="fraction PNEUMONIA",
           title=f"Reliability (ECE {report['ece']:.3f}, Brier {report['brier']:.3f})")
    for a in axes.flat[[0, 1, 3]]:
        a.grid(alpha=0.3)
    fig.suptitle(f"{report['model_version']} on {report['split']} (n={report['n']})")
    fig.tight_layout()
    for name, index in (("roc", (0, 0)), ("pr", (0, 1)), ("confusion_matrix", (1, 0)), ("calibration", (1, 1))):
        extent = axes[index].get_tightbbox().transformed(fig.dpi_scale_trans.inverted())
        fig.savefig(out / f"{name}.png", bbox_inches=extent.expanded(1.05, 1.05), dpi=100)
    fig.savefig(out / "evaluation.png", dpi=100)
    plt.close(fig)
