"""Ensembles: several trained bundles averaged inside one Keras model, so the pipeline sees one model.

Members may have different input sizes. The ensemble takes the largest; a smaller member gets the
image through an antialiased bilinear resize inside the model. The members must have been trained
with the same patient-wise validation split, and the ensemble's threshold is chosen on that split
by the usual rule, so the test split is never read here either.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pneumoscan.config import DecodePolicy
from pneumoscan.domain import LABELS
from pneumoscan.models import metrics
from pneumoscan.models.bundle import MODEL_FILE, BundleError, ModelBundle, configure_devices, write_bundle
from pneumoscan.models.card import ModelCard, threshold_rule
from pneumoscan.models.dataset import labels_of, train_validation
from pneumoscan.models.train import validation_calibration

log = logging.getLogger(__name__)


def _leaves(member: ModelBundle) -> list[tuple[Any, int]]:
    """(Keras model, input size) of each network in a bundle: an ensemble bundle gives its own members."""
    import keras

    model = keras.models.load_model(member.path / MODEL_FILE, compile=False)
    if not member.card.is_ensemble:
        return [(model, member.input_size)]
    return [(layer, int(layer.input_shape[1])) for layer in model.layers
            if layer.name.startswith("member") and hasattr(layer, "layers")]


def build_ensemble(members: list[ModelBundle]) -> Any:
    """One Keras model that averages the members' probabilities, at the largest member's input size.

    An ensemble among the members is flattened: each of its networks counts as one member.
    """
    import keras

    import pneumoscan.models.layers  # noqa: F401  (registers the custom layers for loading)

    leaves = [leaf for member in members for leaf in _leaves(member)]
    size = max(leaf_size for _, leaf_size in leaves)
    inputs = keras.Input((size, size, 1), name="image")
    outputs = []
    for i, (model, leaf_size) in enumerate(leaves):
        wrapped = keras.Model(model.input, model.output, name=f"member{i}_{leaf_size}px")
        x = inputs
        if leaf_size != size:
            x = keras.layers.Resizing(leaf_size, leaf_size, interpolation="bilinear",
                                      antialias=True, name=f"member{i}_resize")(inputs)
        outputs.append(wrapped(x))
    mean = keras.layers.Average(name="pneumonia")(outputs)
    return keras.Model(inputs, mean, name="ensemble")


def _member_entries(member: ModelBundle) -> list[Mapping[str, Any]]:
    """What the ensemble's card records of a member: one entry per network (an ensemble gives its own)."""
    card = member.card
    if card.is_ensemble:
        return list(card.members or ())
    if card.validation_roc_auc is None:
        raise BundleError(f"{member.path} has no validation ROC AUC in its card; train it with `pneumoscan train`")
    return [{"version": card.version, "architecture": card.architecture, "input_size": card.input_size,
             "sha256": card.sha256, "validation_roc_auc": card.validation_roc_auc}]


def ensemble(members: list[ModelBundle], data_dir: Path, out: Path, policy: DecodePolicy, *, version: str | None = None,
             min_sensitivity: float | None = None) -> ModelBundle:
    """Combine ``members`` into one bundle in ``out``, with its threshold chosen on their validation split."""
    if len(members) < 2:
        raise BundleError("an ensemble needs at least two bundles")
    splits = {m.card.validation_split for m in members}
    data, val_fraction, seed = next(iter(splits))
    if len(splits) != 1 or data is None or val_fraction is None or seed is None:
        raise BundleError("the bundles were not trained on one validation split (data, val_fraction and seed "
                          f"must match and be in their cards): {sorted(map(str, splits))}")
    # The decoding is the part before ";"; after it, a card says what its model does itself, which may differ.
    if len({(m.card.preprocessing or "").split(";")[0] for m in members}) != 1:
        raise BundleError("the bundles preprocess their input differently and cannot share one input")
    if data != data_dir.name:
        raise BundleError(f"the bundles were trained on {data!r}, not on {data_dir.name!r}")
    rule = min_sensitivity if min_sensitivity is not None else members[0].card.min_sensitivity
    configure_devices()
    model = build_ensemble(members)
    size = int(model.input_shape[1])
    _, val_set = train_validation(data_dir, val_fraction, seed)
    y_val = labels_of(val_set)
    calibration, scores, threshold = validation_calibration(model, val_set, size, policy, rule)
    now = datetime.now(UTC)
    first = members[0].card
    provenance = first.training or {}
    card = ModelCard(
        version=version or f"ensemble-{now:%Y%m%d-%H%M%S}",
        architecture="ensemble",
        input_size=size,
        preprocessing=first.preprocessing,
        threshold=threshold,
        threshold_rule=threshold_rule(rule),
        labels=tuple(LABELS),
        output="mean probability of PNEUMONIA over the members",
        created_at=now.isoformat(timespec="seconds"),
        parameters=int(model.count_params()),
        members=tuple(leaf for m in members for leaf in _member_entries(m)),
        training={"data": data, "split": provenance.get("split"),
                  "validation_images": provenance.get("validation_images"),
                  "config": {"val_fraction": val_fraction, "seed": seed, "min_sensitivity": rule}},
        calibration=calibration,
        validation_metrics=metrics.summarize(y_val, scores, threshold),
        extra={"test_metrics": None},  # until `evaluate --update-card` measures the test split
    )
    bundle = write_bundle(out, model, card)
    log.info("ensemble written to %s: %s", out, json.dumps(card.validation_metrics))
    return bundle
