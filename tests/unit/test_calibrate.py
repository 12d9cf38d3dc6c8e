"""Calibration: temperature scaling, calibration error figures and the site threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscan.models import calibrate
from pneumoscan.models.temperature import apply_temperature


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities, and a model that reports those logits multiplied by 4."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    return labels, 1 / (1 + np.exp(-4.0 * true_logit))


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_model() -> None:
    labels, scores = _overconfident()
    temperature = calibrate.fit_temperature(labels, scores)
    assert temperature == pytest.approx(4.0, rel=0.15)
    calibrated = apply_temperature(scores, temperature)
    assert calibrate.nll(labels, calibrated) < calibrate.nll(labels, scores) - 0.1
    assert calibrate.expected_calibration_error(labels, calibrated) < calibrate.expected_calibration_error(
        labels, scores) / 2
    # Temperature keeps the order, so ranking and any threshold's labels map one to one.
    assert np.all(np.diff(calibrated[np.argsort(scores)]) >= 0)


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(5000)
    labels = (rng.random(5000) < p).astype(int)
    assert calibrate.fit_temperature(labels, p) == pytest.approx(1.0, abs=0.1)


def test_brier_and_ece_on_a_hand_worked_case() -> None:
    labels = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.9])
    assert calibrate.brier(labels, p) == pytest.approx((0.01 + 0.09 + 0.16 + 0.01) / 4)
    # bins: 0.1 -> [0.1,0.2) obs 0; 0.3 -> obs 0; 0.6 -> obs 1; 0.9 -> obs 1: |gaps| .1 .3 .4 .1
    assert calibrate.expected_calibration_error(labels, p) == pytest.approx((0.1 + 0.3 + 0.4 + 0.1) / 4)


def test_validation_fit_picks_its_threshold_on_the_calibrated_scores() -> None:
    labels, scores = _overconfident(2000, seed=3)
    entry, calibrated, threshold = calibrate.fit_on_validation(labels, scores, 0.95)
    assert entry.after["nll"] < entry.before["nll"]
    kept = (calibrated[labels == 1] >= threshold).mean()
    assert kept >= 0.95 and (calibrated[labels == 1] >= threshold + 1e-6).mean() < 0.95 + 1e-3


def test_site_threshold_meets_the_target_and_refuses_too_few_reviews() -> None:
    labels, scores = _overconfident(300, seed=4)
    threshold, figures = calibrate.site_threshold(labels, scores, 0.95, min_per_class=50)
    assert figures["sensitivity"] >= figures["expected_sensitivity"] >= 0.95
    assert (scores[labels == 1] >= threshold).mean() == figures["sensitivity"]
    with pytest.raises(calibrate.TooFewReviews, match="at least 200 of each"):
        calibrate.site_threshold(labels, scores, 0.95, min_per_class=200)


def test_site_threshold_allows_the_misses_whose_expectation_on_new_cases_meets_the_target() -> None:
    # 78 reviewed pneumonias at 0.95: (m + 1) / 79 <= 0.05 allows m = 2, so the third lowest score
    scores = np.arange(1, 79) / 100.0
    labels = np.ones(78, dtype=int)
    assert calibrate.site_threshold(np.r_[labels, 0], np.r_[scores, 0.5], 0.95, 1)[0] == pytest.approx(0.03)
    # 19 pneumonias is the fewest that no miss promises 0.95 with (1/20); 18 are refused, naming 19
    assert calibrate.site_threshold(np.r_[labels[:19], 0], np.r_[scores[:19], 0.5], 0.95, 1)[0] == 0.01
    with pytest.raises(calibrate.TooFewReviews, match=r"18 PNEUMONIA cases cannot promise .* at least 19"):
        calibrate.site_threshold(np.r_[labels[:18], 0], np.r_[scores[:18], 0.5], 0.95, 1)
    with pytest.raises(calibrate.TooFewReviews, match="no number of PNEUMONIA cases can promise"):
        calibrate.site_threshold(np.r_[labels, 0], np.r_[scores, 0.5], 1.0, 1)


@pytest.mark.parametrize("positives", [50, 200])
def test_sites_that_calibrate_on_their_reviews_get_the_target_sensitivity_on_their_new_cases(positives: int) -> None:
    """Many simulated sites, each fitting on its own reviews; the sensitivity on new cases is known exactly.

    Pneumonia scores are Beta(5, 2), so a threshold t keeps 1 - F(t) of all new pneumonias. The rule
    promises the target in expectation over sites; keeping the target on the reviewed cases alone
    falls short of it by about 1 / (P + 1) (0.941 at 50, 0.945 at 200). The 1,500 sites run the rule
    itself (``choose_threshold`` on new cases, 0.004 ms); ``site_threshold``, which adds the figures on
    the reviewed cases (4.5 ms), is held to the rule's threshold on the first sites.
    """
    from scipy import stats

    from pneumoscan.models import metrics

    rng = np.random.default_rng(positives)
    thresholds = []
    for site in range(1500):
        labels, scores = np.r_[np.ones(positives, int), 0], np.r_[rng.beta(5, 2, positives), 0.0]
        threshold = metrics.choose_threshold(labels, scores, 0.95, on_new_cases=True)
        if site < 20:
            assert calibrate.site_threshold(labels, scores, 0.95, 1)[0] == threshold
        thresholds.append(threshold)
    kept = stats.beta(5, 2).sf(np.array(thresholds))
    assert np.mean(kept) >= 0.95 - 0.002  # three standard errors of the mean of 1,500 sites
