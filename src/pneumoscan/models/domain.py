"""The domain gate: is an image like those the model was validated on?

Two checks, either of which marks a result ``out``:

- **The image.** Its penultimate features (what the classifier reads, ``engine.with_features``) are
  scored by their Mahalanobis distance to the training images' features, under a covariance shrunk
  towards a multiple of the identity (Ledoit and Wolf's estimate) so that 1280 dimensions can be
  fitted on a few thousand images. The threshold is fitted on the validation split so that at most
  2% of it scores above. Both live beside the model, in ``domain.npz`` and the card's ``domain``.
- **The patient's age**, where a DICOM header gives it: an age band outside the card's validated bands.

The age itself is never stored: decoding keeps only its band (``domain.age_band``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.models.card import BundleError

__all__ = ["DOMAIN_FILE", "MAX_VALIDATION_MARKED", "DomainGate", "DomainVerdict", "fit_gate", "ledoit_wolf",
           "load_gate", "save_statistics", "threshold_for"]

DOMAIN_FILE = "domain.npz"
MAX_VALIDATION_MARKED = 0.02  # the threshold leaves at most this share of validation images marked

def ledoit_wolf(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, shrunk covariance, shrinkage) of ``features`` (n, d): Ledoit and Wolf's well-conditioned estimate,
    the sample covariance pulled towards ``mu * I`` by the shrinkage that minimises the expected squared error."""
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    x = x - mean
    sample = x.T @ x / n
    mu = np.trace(sample) / d
    dispersion = np.sum((sample - mu * np.eye(d)) ** 2)  # ||S - mu I||_F^2
    # sum_k ||x_k x_k^T - S||_F^2 = sum_k ||x_k||^4 - n ||S||_F^2
    squared_norms = np.sum(x * x, axis=1)
    spread = (np.sum(squared_norms ** 2) - n * np.sum(sample ** 2)) / n ** 2
    shrinkage = float(min(spread, dispersion) / dispersion) if dispersion > 0 else 1.0
    return mean, shrinkage * mu * np.eye(d) + (1.0 - shrinkage) * sample, shrinkage


def threshold_for(validation_scores: np.ndarray, share: float = MAX_VALIDATION_MARKED) -> float:
    """The lowest score threshold that marks (score > threshold) at most ``share`` of the validation scores."""
    ordered = np.sort(np.asarray(validation_scores, dtype=np.float64))
    allowed = math.floor(share * len(ordered))
    return float(ordered[len(ordered) - allowed - 1])


@dataclass(frozen=True)
class DomainVerdict:
    """One result's standing: ``out`` with the reason why, or ``in``; the image's score either way."""

    out: bool
    score: float | None
    reason: str | None = None


@dataclass(frozen=True)
class DomainGate:
    """A fitted gate: feature mean and whitening (z = (f - mean) @ whiten), score threshold, validated age bands."""

    mean: np.ndarray
    whiten: np.ndarray
    threshold: float
    age_bands: tuple[str, ...]

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances of a (n, d) batch of features to the training images' features."""
        z = (np.asarray(features, dtype=np.float32) - self.mean) @ self.whiten
        return np.sqrt(np.sum(z.astype(np.float64) ** 2, axis=1))

    def verdict(self, score: float | None, band: str | None) -> DomainVerdict:
        """``out`` when the age band is known and not validated, or the image scores above the threshold (each
        reason that applies is given)."""
        reasons = []
        if band is not None and band not in self.age_bands:
            reasons.append(f"age {band} is outside the validated {', '.join(self.age_bands)}")
        if score is not None and score > self.threshold:
            reasons.append(f"the image is unlike the validated images (domain score {score:.1f} > "
                           f"{self.threshold:.1f})")
        return DomainVerdict(bool(reasons), score, "; ".join(reasons) or None)


def fit_gate(train_features: np.ndarray, validation_features: np.ndarray, age_bands: tuple[str, ...]
             ) -> tuple[DomainGate, dict[str, Any]]:
    """Fit the gate on train features; place its threshold on validation's. Returns it and the card's record."""
    mean, covariance, shrinkage = ledoit_wolf(train_features)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    whiten = eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12))
    unplaced = DomainGate(mean.astype(np.float32), whiten.astype(np.float32), math.inf, age_bands)
    validation = unplaced.scores(validation_features)
    threshold = threshold_for(validation)
    gate = DomainGate(unplaced.mean, unplaced.whiten, threshold, age_bands)
    record = {
        "features": f"penultimate ({train_features.shape[1]} values, the classifier's input)",
        "score": "Mahalanobis distance to the training images' features",
        "covariance": f"Ledoit-Wolf shrinkage {shrinkage:.4f} towards a multiple of the identity",
        "fitted_on": f"train ({len(train_features)} images; validation held out)",
        "threshold": threshold,
        "threshold_rule": f"lowest threshold marking at most {MAX_VALIDATION_MARKED:.0%} of validation images",
        "validation_n": len(validation),
        "validation_marked": float(np.mean(validation > threshold)),
        "train_score_median": float(np.median(unplaced.scores(train_features))),
        "validation_score_median": float(np.median(validation)),
        "age_bands": list(age_bands),
    }
    return gate, record


def save_statistics(folder: Path, gate: DomainGate) -> None:
    """Write the gate's mean and whitening beside the model (the threshold and bands go in the card)."""
    np.savez_compressed(folder / DOMAIN_FILE, mean=gate.mean, whiten=gate.whiten)


def load_gate(folder: Path, record: Mapping[str, Any] | None) -> DomainGate | None:
    """The gate of the bundle in ``folder`` from its ``domain.npz`` and its card's ``domain`` record;
    None for a bundle without one. A damaged file or record is a BundleError."""
    path = folder / DOMAIN_FILE
    if record is None and not path.exists():
        return None
    try:
        assert record is not None, "the card has no 'domain' record"
        threshold, bands = float(record["threshold"]), tuple(str(b) for b in record["age_bands"])
        with np.load(path) as stats:
            mean, whiten = stats["mean"].astype(np.float32), stats["whiten"].astype(np.float32)
        if mean.ndim != 1 or whiten.shape != (len(mean), len(mean)) or not math.isfinite(threshold):
            raise ValueError("mean and whitening do not fit together")
    except (OSError, KeyError, TypeError, ValueError, AssertionError) as exc:
        raise BundleError(f"the domain gate of {folder} is unusable ({exc}): fit it again with "
                          "`pneumoscan model fit-domain DATA`") from None
    return DomainGate(mean, whiten, threshold, bands)
