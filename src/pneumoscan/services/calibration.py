"""Site calibration: fit the operating point a site's reviews give, undo it, list them; the defaults, once.

`pneumoscan calibrate --from-reviews` and the dashboard's calibrate button both call ``fit``. The
threshold rule itself is the model's (``models.calibrate.site_threshold``); the records and the
relabelling are the database's (``db.reviews``); this module joins the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pneumoscan.db import Database, reviews
from pneumoscan.db.schema import OperatingPoint

if TYPE_CHECKING:
    from pneumoscan.models.bundle import ModelBundle

TARGET_SENSITIVITY = 0.95  # the share of new pneumonias to expect above the fitted threshold
MIN_REVIEWS = 50  # reviewed cases of each class needed before fitting


class TooFewReviews(ValueError):
    """Too few reviewed cases to fit an operating point; the message says how many there are and are needed."""


class NothingToUndo(LookupError):
    """No site operating point is in force for the model: its card's threshold applies."""


@dataclass(frozen=True)
class Fitted:
    """An operating point put in force: the record, its figures on the reviewed cases, and how many there were."""

    point: OperatingPoint
    figures: dict[str, Any]
    reviewed: int


@dataclass(frozen=True)
class Undone:
    """A withdrawn operating point, the threshold in force again, and how many labels that changed."""

    point: OperatingPoint
    threshold: float
    relabelled: int


def fit(db: Database, bundle: ModelBundle, *, target_sensitivity: float = TARGET_SENSITIVITY,
        min_reviews: int = MIN_REVIEWS) -> Fitted:
    """Fit and put in force the operating point that this site's reviews of ``bundle``'s model give.

    The model's existing predictions are relabelled at the new threshold in the same transaction.
    Raises ``TooFewReviews`` when a class has fewer than ``min_reviews`` reviewed cases (or too few
    to promise ``target_sensitivity``); nothing changes then.
    """
    import numpy as np

    from pneumoscan.models import calibrate  # scikit-learn, no TensorFlow: loaded when a fit is asked for

    with db.begin() as session:
        cases = reviews.reviewed_cases(session, bundle.version)
        labels = np.array([c.label for c in cases], dtype=int)
        try:
            threshold, figures = calibrate.site_threshold(labels, np.array([c.probability for c in cases]),
                                                          target_sensitivity, min_reviews)
        except calibrate.TooFewReviews as exc:
            raise TooFewReviews(str(exc)) from None
        point = reviews.record_point(session, bundle.version, threshold, bundle.threshold, target_sensitivity,
                                     cases, figures)
    return Fitted(point, figures, len(cases))


def undo(db: Database, bundle: ModelBundle) -> Undone:
    """Withdraw the operating point in force for ``bundle``'s model; the one before it (or the card's) applies
    again, to existing labels too. Raises ``NothingToUndo`` when none is in force."""
    try:
        with db.begin() as session:
            point, threshold, changed = reviews.undo_point(session, bundle.version, bundle.threshold)
    except LookupError as exc:
        raise NothingToUndo(str(exc)) from None
    return Undone(point, threshold, changed)


def history(db: Database, model_version: str) -> list[OperatingPoint]:
    """Every operating point ever fitted for ``model_version``, oldest first (undone ones too)."""
    with db() as session:
        return reviews.history(session, model_version)
