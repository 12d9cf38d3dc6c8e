"""Fitting the domain gate on a bundle's own split, and reading the share it marks on a split.

`pneumoscan model fit-domain DATA`: features of the train images (validation held out, carved by patient as the
card says), the gate fitted on them, its threshold placed on validation, written beside the model
(``domain.npz``) and in the card (``domain``). `pneumoscan model domain-check DATA --split test`: the share of a
split the fixed gate marks (docs/model-eval/domain-gate.md: the test split is read once, after the fit).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.config import DecodePolicy
from pneumoscan.models.bundle import ModelBundle, write_card
from pneumoscan.models.card import BundleError
from pneumoscan.models.dataset import Example, list_split, load_images
from pneumoscan.models.domain import fit_gate, save_statistics
from pneumoscan.models.precision import bundle_split

__all__ = ["VALIDATED_AGE_BANDS", "domain_share", "fit_domain"]

# The dataset's cohort: pediatric patients aged one to five (Kermany et al., Cell 2018).
VALIDATED_AGE_BANDS = ("1-5y",)


def _features(bundle: ModelBundle, examples: list[Example], policy: DecodePolicy, batch: int,
              on_batch: Callable[[int], None] | None) -> np.ndarray:
    chunks = []
    for start in range(0, len(examples), batch):
        chunk = examples[start:start + batch]
        pixels = load_images(chunk, bundle.input_size, policy, exact=True, workers=os.cpu_count() or 2)
        _, features = bundle.engine.run(pixels[..., None])
        if features is None:
            raise BundleError(f"{bundle.version} has no single layer of features (an ensemble): it has no domain gate")
        chunks.append(features)
        if on_batch is not None:
            on_batch(len(chunk))
    return np.concatenate(chunks)


def _split(bundle: ModelBundle, data_dir: Path) -> tuple[list[Example], list[Example]]:
    train, val = bundle_split(bundle, data_dir)
    if not train or not val:
        raise BundleError(f"no train images under {data_dir}/train to fit the domain gate on")
    return train, val


def fit_domain(bundle: ModelBundle, data_dir: Path, policy: DecodePolicy, *, batch: int = 64,
               on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Fit the bundle's domain gate on ``data_dir``'s train split and write it into the bundle; the record."""
    train, val = _split(bundle, data_dir)
    gate, record = fit_gate(_features(bundle, train, policy, batch, on_batch),
                            _features(bundle, val, policy, batch, on_batch), VALIDATED_AGE_BANDS)
    record = {**record, "model_sha256": bundle.model_sha256, "data": data_dir.name,
              "age_source": "Kermany et al. 2018: pediatric patients aged one to five",
              "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "rule": "docs/model-eval/domain-gate.md"}
    save_statistics(bundle.path, gate)
    write_card(bundle.path, bundle.card.with_domain(record))
    return record


def domain_share(bundle: ModelBundle, data_dir: Path, split: str, policy: DecodePolicy, *, batch: int = 64,
                 on_batch: Callable[[int], None] | None = None, update_card: bool = False) -> dict[str, Any]:
    """The share of ``split`` ("validation", or a folder such as "test") that the bundle's gate marks ``out``.

    With ``update_card`` the figure is recorded in the card's ``domain`` record as ``<split>_marked``.
    """
    gate = bundle.domain_gate
    if gate is None:
        raise BundleError(f"{bundle.version} has no domain gate: fit one with `pneumoscan model fit-domain DATA`")
    examples = _split(bundle, data_dir)[1] if split == "validation" else list_split(data_dir, split)
    if not examples:
        raise BundleError(f"no images in the {split} split under {data_dir}")
    scores = gate.scores(_features(bundle, examples, policy, batch, on_batch))
    marked = scores > gate.threshold
    figures = {"split": split, "n": len(scores), "marked": int(marked.sum()), "share": float(marked.mean()),
               "score_median": float(np.median(scores)), "threshold": gate.threshold}
    if update_card:
        card = bundle.card
        record = {**(card.domain or {}), f"{split}_marked": float(marked.mean()), f"{split}_n": len(scores)}
        write_card(bundle.path, card.with_domain(record))
    return figures
