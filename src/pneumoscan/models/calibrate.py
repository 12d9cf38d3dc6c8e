"""Calibration: temperature scaling fitted on validation, calibration error figures, and site operating points."""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumoscan.models import metrics
from pneumoscan.models.card import Calibration
from pneumoscan.models.temperature import apply_temperature, logit

_EPS = 1e-7
TEMPERATURE_BOUNDS = (0.05, 20.0)


def nll(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy (negative log-likelihood) of the labels under the probabilities."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature in ``TEMPERATURE_BOUNDS`` that minimizes the NLL of ``labels`` (bounded Brent on log T).

    The NLL of a temperature-scaled logistic model is unimodal in log T, so SciPy's bounded scalar
    minimizer finds its minimum.
    """
    from scipy.optimize import minimize_scalar

    z = logit(probabilities)
    y = np.asarray(labels, dtype=np.float64)

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # cross-entropy on logits, stable at large |s|

    bounds = (float(np.log(TEMPERATURE_BOUNDS[0])), float(np.log(TEMPERATURE_BOUNDS[1])))
    result = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-9})
    return float(np.exp(result.x))


def brier(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared difference between the probability and the 0/1 label."""
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean((np.asarray(probabilities, dtype=np.float64) - y) ** 2))


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """Bin-weighted mean |observed rate - mean probability| over equal-width probability bins."""
    cal = metrics.calibration(labels, probabilities, bins)
    n = sum(cal["count"])
    return float(sum(c * abs(o - p) for c, o, p in
                     zip(cal["count"], cal["fraction_positive"], cal["mean_predicted"], strict=True)) / max(n, 1))


def calibration_report(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Brier score, expected calibration error and NLL, the figures `evaluate` and the card report."""
    return {"brier": brier(labels, probabilities), "ece": expected_calibration_error(labels, probabilities),
            "nll": nll(labels, probabilities)}


def fit_on_validation(labels: np.ndarray, raw: np.ndarray, min_sensitivity: float) -> tuple[Calibration, np.ndarray,
                                                                                             float]:
    """Temperature and threshold from validation: (card calibration entry, calibrated scores, threshold).

    The threshold is chosen on the calibrated scores, so it applies to what the bundle's predict returns.
    """
    temperature = fit_temperature(labels, raw)
    calibrated = apply_temperature(raw, temperature)
    entry = Calibration(method="temperature", temperature=temperature, fitted_on="validation",
                        before=calibration_report(labels, raw), after=calibration_report(labels, calibrated))
    return entry, calibrated, metrics.choose_threshold(labels, calibrated, min_sensitivity)


class TooFewReviews(ValueError):
    """A site calibration asked for with fewer reviewed cases of a class than required."""


def site_threshold(labels: np.ndarray, probabilities: np.ndarray, target_sensitivity: float,
                   min_per_class: int) -> tuple[float, dict[str, Any]]:
    """The operating point a site's reviewed cases give: (threshold, figures on those cases at it).

    ``labels`` are the reviewers' labels and ``probabilities`` the model's stored ones. The threshold
    is the highest whose sensitivity to expect on the site's new cases meets ``target_sensitivity``
    (docs/model-eval/site-rule-v2.md); the figures add that expected sensitivity to those on the
    reviewed cases.
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=2)
    if counts.min() < min_per_class:
        raise TooFewReviews(f"too few reviewed cases to calibrate: {counts[0]} NORMAL and {counts[1]} PNEUMONIA "
                            f"reviewed for this model, at least {min_per_class} of each are needed (--min-reviews)")
    try:
        threshold = metrics.choose_threshold(labels, probabilities, target_sensitivity, on_new_cases=True)
    except ValueError as exc:
        raise TooFewReviews(f"too few reviewed cases to calibrate: {exc} (or a lower --target-sensitivity)") from None
    figures = metrics.summarize(labels, probabilities, threshold)
    figures["expected_sensitivity"] = metrics.expected_sensitivity(labels, probabilities, threshold)
    return threshold, figures
