"""Temperature scaling at run time: numpy alone, so that a prediction never loads scikit-learn or SciPy."""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): T > 1 softens overconfident probabilities, and no label order changes."""
    if temperature == 1.0:
        return np.asarray(probabilities, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-logit(probabilities) / temperature))).astype(np.float32)
