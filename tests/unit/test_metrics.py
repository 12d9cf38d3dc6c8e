"""Model metrics against values worked out by hand, and the sensitivity-first threshold choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pneumoscan.models import metrics

# Eight cases. Sorted by score, high to low:
#   0.95 P, 0.90 P, 0.80 N, 0.70 P, 0.60 N, 0.30 N, 0.20 P, 0.10 N
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
SCORES = np.array([0.10, 0.30, 0.60, 0.80, 0.20, 0.70, 0.90, 0.95])


def test_confusion_by_hand() -> None:
    # At 0.5: predicted positive are 0.60 N, 0.80 N, 0.70 P, 0.90 P, 0.95 P.
    assert metrics.confusion(LABELS, SCORES, 0.5) == {"tp": 3, "fp": 2, "tn": 2, "fn": 1}
    # ">= threshold" is positive: at exactly 0.70 the 0.70 P counts as found.
    assert metrics.confusion(LABELS, SCORES, 0.70) == {"tp": 3, "fp": 1, "tn": 3, "fn": 1}
    assert metrics.confusion(LABELS, SCORES, 0.0) == {"tp": 4, "fp": 4, "tn": 0, "fn": 0}
    assert metrics.confusion(LABELS, SCORES, 1.01) == {"tp": 0, "fp": 0, "tn": 4, "fn": 4}


def test_summary_by_hand() -> None:
    s = metrics.summarize(LABELS, SCORES, 0.5)
    # tp 3, fp 2, tn 2, fn 1
    assert s["n"] == 8
    assert s["accuracy"] == pytest.approx(5 / 8)
    assert s["sensitivity"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["specificity"] == pytest.approx(2 / 4)
    assert s["precision"] == pytest.approx(3 / 5)
    # F1 = 2 P R / (P + R) = 2 * 3/5 * 3/4 / (3/5 + 3/4) = (9/10) / (27/20) = 2/3
    assert s["f1"] == pytest.approx(2 / 3)
    # ROC AUC = share of (positive, negative) pairs ranked correctly:
    #   0.20 beats 1 negative, 0.70 beats 3, 0.90 beats 4, 0.95 beats 4 -> 12 / 16
    assert s["roc_auc"] == pytest.approx(12 / 16)
    # Average precision = mean precision at each positive's rank: ranks 1, 2, 4, 7
    #   (1/1 + 2/2 + 3/4 + 4/7) / 4
    assert s["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 7) / 4)
    assert s["confusion_matrix"]["labels"] == ["NORMAL", "PNEUMONIA"]
    assert s["confusion_matrix"]["rows_true_cols_predicted"] == [[2, 2], [1, 3]]


def test_roc_auc_counts_ties_as_half() -> None:
    # Positives 0.5 and 0.8, negatives 0.5 and 0.2: pairs 0.5/0.5 tie (1/2), 0.5>0.2, 0.8>0.5, 0.8>0.2
    assert metrics.roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.8])) == pytest.approx(3.5 / 4)


def test_roc_auc_extremes() -> None:
    assert metrics.roc_auc(LABELS, LABELS.astype(float)) == pytest.approx(1.0)
    assert metrics.roc_auc(LABELS, 1.0 - LABELS) == pytest.approx(0.0)
    assert metrics.roc_auc(LABELS, np.full(8, 0.5)) == pytest.approx(0.5)


def test_roc_curve_shape() -> None:
    fpr, tpr, thresholds = metrics.roc_curve(LABELS, SCORES)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.all(np.diff(thresholds) < 0)
    # At threshold 0.70 (the fourth distinct score from the top): tpr 3/4, fpr 1/4.
    i = int(np.flatnonzero(thresholds == 0.70)[0])
    assert (fpr[i], tpr[i]) == (0.25, 0.75)


def test_average_precision_by_hand_with_ties() -> None:
    # Scores 0.9 P, 0.9 N (tied), 0.4 P. Threshold 0.9: recall 1/2, precision 1/2; 0.4: recall 1, precision 2/3.
    ap = metrics.average_precision(np.array([1, 0, 1]), np.array([0.9, 0.9, 0.4]))
    assert ap == pytest.approx(0.5 * 0.5 + 0.5 * (2 / 3))


@pytest.mark.parametrize(
    ("min_sensitivity", "expected"),
    [
        (1.0, 0.20),  # keep every positive: the lowest positive score
        (0.8, 0.20),  # 0.8 * 4 = 3.2 positives needed -> all 4
        (0.75, 0.70),  # 3 of 4 suffice: drop the 0.20
        (0.5, 0.90),
        (0.25, 0.95),
    ],
)
def test_choose_threshold_by_hand(min_sensitivity: float, expected: float) -> None:
    assert metrics.choose_threshold(LABELS, SCORES, min_sensitivity) == pytest.approx(expected)


def test_choose_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="min_sensitivity"):
        metrics.choose_threshold(LABELS, SCORES, 0.0)
    with pytest.raises(ValueError, match="min_sensitivity"):
        metrics.choose_threshold(LABELS, SCORES, 1.5)
    with pytest.raises(ValueError, match="PNEUMONIA"):
        metrics.choose_threshold(np.zeros(4), np.linspace(0, 1, 4), 0.9)


def _sensitivity(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    c = metrics.confusion(labels, scores, threshold)
    return c["tp"] / (c["tp"] + c["fn"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=1, max_size=40).filter(
        lambda rows: any(label for label, _ in rows)
    ),
    st.floats(0.01, 1.0),
)
def test_choose_threshold_is_the_highest_that_meets_the_target(rows: list[tuple[bool, int]], target: float) -> None:
    labels = np.array([label for label, _ in rows], dtype=int)
    scores = np.array([score / 20 for _, score in rows])  # coarse scores, so ties are common
    threshold = metrics.choose_threshold(labels, scores, target)
    assert _sensitivity(labels, scores, threshold) >= target - 1e-9
    higher = [s for s in np.unique(scores) if s > threshold]
    if higher:
        # The next distinct score up would miss the target: nothing stricter is allowed.
        assert _sensitivity(labels, scores, min(higher)) < target - 1e-9


def test_calibration_bins() -> None:
    c = metrics.calibration(np.array([0, 1, 1, 0]), np.array([0.05, 0.15, 0.95, 1.0]), bins=10)
    assert c["count"] == [1.0, 1.0, 2.0]
    assert c["mean_predicted"] == pytest.approx([0.05, 0.15, 0.975])
    assert c["fraction_positive"] == pytest.approx([0.0, 1.0, 0.5])
