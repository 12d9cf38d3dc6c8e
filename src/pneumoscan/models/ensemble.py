"""Combining trained bundles into one: ensembles average their outputs, soups average their weights.

An ensemble is one Keras model that runs every member and averages their probabilities. Members may
have different input sizes. The ensemble takes the largest; a smaller member gets the image through an
antialiased bilinear resize inside the model. A soup (a "uniform model soup") is one network whose
every weight is the mean of its ingredients': fine-tunes of one recipe from one pretrained start, which
differ only in training's randomness. It costs no more to run than one ingredient.

Either way the bundles must have been trained with the same patient-wise validation split, and the
result's temperature and threshold are fitted on that split by the usual rule, so the test split is
never read here either.
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
from pneumoscan.models.train import validation_calibration, validation_warnings

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


def _shared_split(members: list[ModelBundle], data_dir: Path, what: str) -> tuple[str, float, int]:
    """The validation split every member was trained with; BundleError when they do not share one."""
    if len(members) < 2:
        raise BundleError(f"{what} needs at least two bundles")
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
    return data, val_fraction, seed


def _calibrated_bundle(model: Any, sources: list[ModelBundle], data_dir: Path, out: Path, policy: DecodePolicy,
                       split: tuple[str, float, int], rule: float, **card_fields: Any) -> ModelBundle:
    """Fit ``model``'s temperature and threshold on its sources' validation split and write its bundle."""
    data, val_fraction, seed = split
    size = int(model.input_shape[1])
    _, val_set = train_validation(data_dir, val_fraction, seed)
    calibration, scores, threshold = validation_calibration(model, val_set, size, policy, rule)
    provenance = sources[0].card.training or {}
    training = {"data": data, "split": provenance.get("split"),
                "validation_images": provenance.get("validation_images"),
                "config": {"val_fraction": val_fraction, "seed": seed, "min_sensitivity": rule}}
    training.update(card_fields.pop("training", {}))
    y_val = labels_of(val_set)
    warnings = validation_warnings(y_val, scores)
    for warning in warnings:
        log.warning("%s", warning)
    card = ModelCard(
        input_size=size,
        preprocessing=sources[0].card.preprocessing,
        threshold=threshold,
        threshold_rule=threshold_rule(rule),
        labels=tuple(LABELS),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parameters=int(model.count_params()),
        training=training,
        calibration=calibration,
        validation_metrics=metrics.summarize(y_val, scores, threshold),
        warnings=tuple(warnings),
        extra={"test_metrics": None},  # until `evaluate --update-card` measures the test split
        **card_fields,
    )
    bundle = write_bundle(out, model, card)
    log.info("%s written to %s: %s", card.architecture, out, json.dumps(card.validation_metrics))
    return bundle


def ensemble(members: list[ModelBundle], data_dir: Path, out: Path, policy: DecodePolicy, *, version: str | None = None,
             min_sensitivity: float | None = None) -> ModelBundle:
    """Combine ``members`` into one bundle in ``out``, with its threshold chosen on their validation split."""
    split = _shared_split(members, data_dir, "an ensemble")
    rule = min_sensitivity if min_sensitivity is not None else members[0].card.min_sensitivity
    configure_devices()
    model = build_ensemble(members)
    return _calibrated_bundle(
        model, members, data_dir, out, policy, split, rule,
        version=version or f"ensemble-{datetime.now(UTC):%Y%m%d-%H%M%S}", architecture="ensemble",
        output="mean probability of PNEUMONIA over the members",
        members=tuple(leaf for m in members for leaf in _member_entries(m)))


# What must be equal in the ingredients' training configs for their weights to be averaged meaningfully.
_SOUP_RECIPE = ("architecture", "input_size", "equalize", "weights")


def average_weights(models: list[Any]) -> list[Any]:
    """The element-wise mean of the models' weights; BundleError unless they are one network.

    Integer state (a seed generator's, say) is not averaged: the first model's is kept.
    """
    import numpy as np

    structure = [[(type(layer).__name__, [tuple(w.shape) for w in layer.weights]) for layer in m.layers]
                 for m in models]
    if any(s != structure[0] for s in structure[1:]):
        raise BundleError("the bundles are not the same network (their layers or weight shapes differ)")
    weights = [m.get_weights() for m in models]
    return [np.mean([w[i] for w in weights], axis=0, dtype=np.float64).astype(first.dtype)
            if np.issubdtype(first.dtype, np.floating) else first
            for i, first in enumerate(weights[0])]


def soup(ingredients: list[ModelBundle], data_dir: Path, out: Path, policy: DecodePolicy, *,
         version: str | None = None, min_sensitivity: float | None = None) -> ModelBundle:
    """Average the ingredients' weights into one network in ``out``, calibrated on their validation split."""
    split = _shared_split(ingredients, data_dir, "a soup")
    for bundle in ingredients:
        if bundle.card.is_ensemble:
            raise BundleError(f"{bundle.path} is an ensemble; a soup's ingredients are single networks")
    recipes = {tuple((k, b.card.training_config.get(k, False if k == "equalize" else None)) for k in _SOUP_RECIPE)
               for b in ingredients}
    if len(recipes) != 1:
        raise BundleError("the bundles were not trained from one recipe (architecture, input size, "
                          f"equalization and starting weights must match): {sorted(map(str, recipes))}")
    rule = min_sensitivity if min_sensitivity is not None else ingredients[0].card.min_sensitivity
    configure_devices()
    import keras

    import pneumoscan.models.layers  # noqa: F401  (registers the custom layers for loading)

    models = [keras.models.load_model(b.path / MODEL_FILE, compile=False) for b in ingredients]
    models[0].set_weights(average_weights(models))
    first = ingredients[0].card
    shared, differing = _split_configs([b.card.training_config for b in ingredients])
    return _calibrated_bundle(
        models[0], ingredients, data_dir, out, policy, split, rule,
        version=version or f"soup-{datetime.now(UTC):%Y%m%d-%H%M%S}", architecture=first.architecture,
        output=first.output,
        training={"config": {**shared, "version": version, "min_sensitivity": rule},
                  "soup_of": [{"version": b.card.version, "sha256": b.card.sha256,
                               "train_seed": _training_seed(b.card.training_config),
                               "validation_roc_auc": b.card.validation_roc_auc,
                               **({"config": own} if own else {})}
                              for b, own in zip(ingredients, differing, strict=True)]})


def _split_configs(configs: list[Mapping[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The training options all ingredients share, and each ingredient's own value of the ones they do not.

    A soup's card must not claim one ingredient's recipe for all of them: an option that is missing from an
    older card counts as not set (None). The version and the training seed are recorded per ingredient anyway.
    """
    keys = [k for k in dict.fromkeys(k for c in configs for k in c) if k not in ("version", "train_seed")]
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    shared = {k: configs[0].get(k) for k in keys if k not in differ}
    return shared, [{k: c.get(k) for k in differ} for c in configs]


def _training_seed(config: Mapping[str, Any]) -> Any:
    """The seed of a run's training randomness, as ``TrainConfig.rng_seed`` has it, from its card's config."""
    return config.get("seed") if config.get("train_seed") is None else config["train_seed"]
