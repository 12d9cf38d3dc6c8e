"""Binary classification metrics: scikit-learn for the curves, AUCs and counts; our sensitivity-first threshold rule."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as sk
from sklearn.calibration import calibration_curve

from pneumoscan.domain import LABELS


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts at ``score >= threshold`` means positive (PNEUMONIA)."""
    predicted = (np.asarray(scores) >= threshold).astype(int)
    (tn, fp), (fn, tp) = sk.confusion_matrix(np.asarray(labels).astype(int), predicted, labels=[0, 1])
    return {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, from the highest threshold down."""
    fpr, tpr, thresholds = sk.roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64),
                                        drop_intermediate=False)
    return fpr, tpr, thresholds


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties counted as half); 0.5 when only one class is present."""
    y = np.asarray(labels).astype(int)
    if len(np.unique(y)) < 2:
        return 0.5
    return float(sk.roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score, from the highest threshold down."""
    precision, recall, _ = sk.precision_recall_curve(np.asarray(labels).astype(int),
                                                     np.asarray(scores, dtype=np.float64))
    return precision[-2::-1], recall[-2::-1]  # drop sklearn's closing (1, 0) point and go top-down


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """PR AUC as average precision: the sum of precision weighted by each step in recall."""
    return float(sk.average_precision_score(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64)))


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


def choose_threshold(labels: np.ndarray, scores: np.ndarray, min_sensitivity: float, *,
                     on_new_cases: bool = False) -> float:
    """The highest threshold whose sensitivity is at least ``min_sensitivity`` (best specificity there).

    Screening favours sensitivity, so this fixes the miss rate first and then removes as many false
    alarms as it can. By default the sensitivity is the one on these cases (a validation split). With
    ``on_new_cases`` it is the one to expect on further cases like them (a site's reviews): the share of
    new positives under the (m + 1)-th lowest of P positive scores has expectation (m + 1) / (P + 1), so
    m is the most misses with (m + 1) / (P + 1) <= 1 - ``min_sensitivity``. Raises ``ValueError`` when
    there are too few positives for even no miss to promise that.
    """
    if not 0 < min_sensitivity <= 1:
        raise ValueError("min_sensitivity must be in (0, 1]")
    y = np.asarray(labels).astype(bool)
    if not y.any():
        raise ValueError("threshold selection needs at least one PNEUMONIA example")
    positives = np.sort(np.asarray(scores, dtype=np.float64)[y])
    if on_new_cases:
        misses = int(np.floor((1.0 - min_sensitivity) * (len(positives) + 1) + 1e-9)) - 1
        if misses < 0:  # even no miss among these expects more misses than the target allows
            raise ValueError(_unpromised(len(positives), min_sensitivity))
    else:  # floor((1 - s) * P) misses: the threshold sits at the score of the first positive kept
        misses = int(np.floor((1.0 - min_sensitivity) * len(positives) + 1e-9))
    return float(positives[misses])


def _unpromised(positives: int, min_sensitivity: float) -> str:
    """Why ``positives`` cases cannot promise ``min_sensitivity`` on new ones: no miss needs 1 / (P + 1) <= 1 - s."""
    if min_sensitivity >= 1:
        return f"no number of PNEUMONIA cases can promise a sensitivity of {min_sensitivity} on new cases"
    needed = int(np.ceil(1.0 / (1.0 - min_sensitivity) - 1 - 1e-9))
    return (f"{positives} PNEUMONIA cases cannot promise a sensitivity of {min_sensitivity} on new cases: "
            f"that needs at least {needed}")


def expected_sensitivity(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """The sensitivity to expect on new cases at ``threshold``: 1 - (misses + 1) / (P + 1) on these cases."""
    positives = np.asarray(scores, dtype=np.float64)[np.asarray(labels).astype(bool)]
    return 1.0 - (int((positives < threshold).sum()) + 1) / (len(positives) + 1)


def calibration(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted probability and observed PNEUMONIA rate in equal-width probability bins (empty bins left out)."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    observed, predicted = calibration_curve(y, s, n_bins=bins, strategy="uniform")
    index = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], s, side="right")  # as calibration_curve bins
    counts = np.bincount(index, minlength=bins)
    return {"mean_predicted": [float(v) for v in predicted], "fraction_positive": [float(v) for v in observed],
            "count": [float(c) for c in counts if c > 0]}
