"""Binary classification metrics in plain NumPy: confusion matrix, ROC/PR curves and threshold choice."""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumoscan.domain import LABELS


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts at ``score >= threshold`` means positive (PNEUMONIA)."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(scores) >= threshold
    return {"tp": int(np.sum(p & y)), "fp": int(np.sum(p & ~y)), "tn": int(np.sum(~p & ~y)),
            "fn": int(np.sum(~p & y))}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, from the highest threshold down."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = np.cumsum(~y)[last_of_tie]
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal, ties counted as half)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score, from the highest threshold down."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie].astype(np.float64)
    fps = np.cumsum(~y)[last_of_tie].astype(np.float64)
    precision = tps / (tps + fps)
    recall = tps / max(tps[-1], 1)
    return precision, recall


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """PR AUC as average precision: the sum of precision weighted by each step in recall."""
    precision, recall = pr_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def summarize(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """All the figures pneumoscan reports for one split at one threshold."""
    c = confusion(labels, scores, threshold)
    precision = _ratio(c["tp"], c["tp"] + c["fp"])
    recall = _ratio(c["tp"], c["tp"] + c["fn"])
    return {
        "n": len(labels),
        "threshold": float(threshold),
        "accuracy": _ratio(c["tp"] + c["tn"], sum(c.values())),
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
        "f1": _ratio(2 * precision * recall, precision + recall),
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": average_precision(labels, scores),
        "confusion_matrix": {"labels": list(LABELS),
                             "rows_true_cols_predicted": [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]},
    }


def choose_threshold(labels: np.ndarray, scores: np.ndarray, min_sensitivity: float) -> float:
    """The highest threshold whose sensitivity is at least ``min_sensitivity`` (best specificity there).

    Screening favours sensitivity, so this fixes the miss rate first and then removes as many false
    alarms as it can. Call it with validation data only.
    """
    if not 0 < min_sensitivity <= 1:
        raise ValueError("min_sensitivity must be in (0, 1]")
    y = np.asarray(labels).astype(bool)
    if not y.any():
        raise ValueError("threshold selection needs at least one PNEUMONIA example")
    positives = np.sort(np.asarray(scores, dtype=np.float64)[y])
    # Allow floor((1 - s) * P) misses: the threshold sits at the score of the first positive kept.
    misses = int(np.floor((1.0 - min_sensitivity) * len(positives) + 1e-9))
    return float(positives[misses])


def calibration(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted probability and observed PNEUMONIA rate in equal-width probability bins."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    index = np.minimum((s * bins).astype(int), bins - 1)
    predicted, observed, counts = [], [], []
    for b in range(bins):
        mask = index == b
        if mask.any():
            predicted.append(float(s[mask].mean()))
            observed.append(float(y[mask].mean()))
            counts.append(float(mask.sum()))
    return {"mean_predicted": predicted, "fraction_positive": observed, "count": counts}
