"""Training: patient-wise validation, augmentation, class weights, best-AUC checkpoints and a bundle."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.config import DecodePolicy
from pneumoscan.domain import LABELS
from pneumoscan.models import calibrate, metrics
from pneumoscan.models.bundle import ModelBundle, configure_devices, write_bundle
from pneumoscan.models.card import Calibration, ModelCard, threshold_rule
from pneumoscan.models.dataset import Example, labels_of, load_images, train_validation
from pneumoscan.models.recipe import RecipeError, TrainConfig

log = logging.getLogger(__name__)

PREPROCESSING = (
    "decode with pneumoscan.imaging.decode (JPEG/PNG to 8-bit gray; DICOM modality LUT, VOI LUT or "
    "robust min-max, MONOCHROME1 inverted), resize to input_size x input_size bilinear without "
    "keeping the aspect ratio, scale to [0, 1]; any further normalization is part of the model"
)


class AlreadyTrained(Exception):
    """The output folder already holds the finished bundle of this run; nothing was done."""


# Below these a validation split cannot rank models or place a threshold with any confidence.
MIN_VALIDATION_PER_CLASS = 20


def _schedule(config: TrainConfig, steps_per_epoch: int) -> Any:
    import keras

    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "step":
        bounds = [int(total * 0.5), int(total * 0.75)]
        lr = config.learning_rate
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr, lr / 10, lr / 100])
    if config.schedule == "cosine":
        warmup = min(steps_per_epoch, total // 10)
        return keras.optimizers.schedules.CosineDecay(
            0.0, total - warmup, warmup_target=config.learning_rate, warmup_steps=warmup, alpha=0.01)
    raise ValueError(f"unknown learning-rate schedule {config.schedule!r}: use cosine, constant or step")


def _fine_tuning_optimizer(model: Any, config: TrainConfig, steps_per_epoch: int) -> Any:
    """AdamW whose learning rate for everything but the head is scaled, and held at 0 during the head epochs."""
    import keras
    from keras import ops

    head = model.get_layer("pneumonia").trainable_variables
    hold, ramp, scale = config.head_epochs * steps_per_epoch, max(1, steps_per_epoch), config.backbone_lr_scale

    class FineTuningAdamW(keras.optimizers.AdamW):
        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            # The backend hands over its own variable objects; _var_key maps both kinds to one key.
            if self._var_key(variable) not in {self._var_key(v) for v in head}:
                warm = ops.clip((ops.cast(self.iterations, "float32") - hold) / ramp, 0.0, 1.0)
                learning_rate = learning_rate * scale * warm
            super().update_step(gradient, variable, learning_rate)

    ema = {"use_ema": True, "ema_momentum": config.ema} if config.ema > 0 else {}
    return FineTuningAdamW(_schedule(config, steps_per_epoch), weight_decay=config.weight_decay, **ema)


def _freeze_batchnorm(model: Any) -> int:
    """Put every BatchNormalization layer in inference mode with frozen weights; returns how many."""
    import keras

    frozen = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            frozen += 1
    return frozen


def _augmenter(seed: int, stretch: float = 0.0, resample: float = 0.0) -> Any:
    """Small rotations, zoom, shifts, contrast/gamma, sharpness and noise. No flips: anatomy is not symmetric.

    Sharpness and noise imitate the differences in detector and post-processing between sites.
    ``stretch`` > 0 also scales each image's height alone by up to that share: images resized to a
    square without keeping their aspect ratio carry their source's native aspect ratio as a stretch
    of the anatomy, which a model could otherwise learn as a cue. ``resample`` > 0 shrinks half of the
    batches by a factor down to ``1 - resample`` and enlarges them back: the finest detail left by the
    resize depends on the source's native resolution, another cue of the source rather than the disease.
    """
    import keras
    import tensorflow as tf

    geometric = keras.Sequential([
        keras.layers.RandomRotation(0.025, fill_mode="nearest", seed=seed),  # about +/- 9 degrees
        keras.layers.RandomZoom(0.12, fill_mode="nearest", seed=seed + 1),
        *([keras.layers.RandomZoom((-stretch, stretch), width_factor=0.0, fill_mode="nearest", seed=seed + 4)]
          if stretch > 0 else []),
        keras.layers.RandomTranslation(0.06, 0.06, fill_mode="nearest", seed=seed + 2),
        keras.layers.RandomContrast(0.3, seed=seed + 3),
    ])

    def augment(x: Any) -> Any:
        x = geometric(x, training=True)
        if resample > 0:
            x = _resampled(x, resample)
        per_image = (tf.shape(x)[0], 1, 1, 1)
        x = tf.clip_by_value(x, 0.0, 1.0) ** tf.exp(tf.random.uniform(per_image, -0.35, 0.35))
        blurred = tf.nn.avg_pool2d(x, 3, 1, "SAME")
        x = x + tf.random.uniform(per_image, -0.8, 0.8) * (x - blurred)  # < 0 blurs, > 0 sharpens
        x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform(per_image, 0.0, 0.02)
        return tf.clip_by_value(x, 0.0, 1.0)

    return augment


def _resampled(x: Any, resample: float) -> Any:
    """The batch ``x``, or (half of the time) the batch shrunk by one random factor in [1 - resample, 1]
    and enlarged back."""
    import tensorflow as tf

    size = tf.shape(x)[1:3]
    factor = tf.random.uniform((), 1.0 - resample, 1.0)
    small = tf.maximum(tf.cast(tf.cast(size, tf.float32) * factor, tf.int32), 1)
    return tf.cond(tf.random.uniform(()) < 0.5,
                   lambda: tf.image.resize(tf.image.resize(x, small, antialias=True), size), lambda: x)


def _dataset(images: np.ndarray, labels: np.ndarray, config: TrainConfig, *, train: bool,
             class_weight: dict[int, float] | None = None) -> Any:
    """Batches of (image, label) for validation; (image, label, sample weight) for training.

    Class weights travel as sample weights so that mixup can mix them along with the labels.
    """
    import tensorflow as tf

    y = labels.astype(np.float32)
    if not train:
        ds = tf.data.Dataset.from_tensor_slices((images, y)).batch(config.batch_size)
        return ds.map(lambda x, t: (tf.cast(x, tf.float32)[..., None] / 255.0, t)).prefetch(tf.data.AUTOTUNE)
    weights = np.array([(class_weight or {}).get(int(label), 1.0) for label in labels], np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, y, weights))
    ds = ds.shuffle(len(images), seed=config.rng_seed, reshuffle_each_iteration=True).batch(config.batch_size)
    ds = ds.map(lambda x, t, w: (tf.cast(x, tf.float32)[..., None] / 255.0, t, w),
                num_parallel_calls=tf.data.AUTOTUNE)
    if config.augment:
        augment = _augmenter(config.rng_seed, config.stretch, config.resample)
        ds = ds.map(lambda x, t, w: (augment(x), t, w), num_parallel_calls=tf.data.AUTOTUNE)
    if config.mixup > 0:
        ds = ds.map(_mixer(config.mixup), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _mixer(alpha: float) -> Callable[[Any, Any, Any], tuple[Any, Any, Any]]:
    """Mixup: each image, label and weight becomes a convex mix with a shuffled partner from its batch."""
    import tensorflow as tf

    def mix(x: Any, y: Any, w: Any) -> tuple[Any, Any, Any]:
        n = tf.shape(x)[0]
        a = tf.random.gamma((n,), alpha)
        lam = a / (a + tf.random.gamma((n,), alpha))  # Beta(alpha, alpha)
        partner = tf.random.shuffle(tf.range(n))
        return (lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * tf.gather(x, partner),
                lam * y + (1 - lam) * tf.gather(y, partner), lam * w + (1 - lam) * tf.gather(w, partner))

    return mix


def _best_so_far(history_csv: Path) -> float | None:
    if not history_csv.is_file():
        return None
    with history_csv.open() as fh:
        values = [float(row["val_auc"]) for row in csv.DictReader(fh) if row.get("val_auc")]
    return max(values) if values else None


def _plot_curves(history_csv: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with history_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax_loss), ("auc", ax_auc)):
        ax.plot(epochs, [float(r[key]) for r in rows], label=f"train {key}")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def train(
    data_dir: Path,
    out: Path,
    config: TrainConfig,
    policy: DecodePolicy,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    restart: bool = False,
) -> ModelBundle:
    """Train on ``data_dir/train`` (plus ``val`` if present), write a bundle to ``out`` and return it.

    Validation is carved from train by patient. The best epoch by validation ROC AUC is kept, and
    the threshold is chosen on validation. The test split is never read. Interrupted runs resume
    from ``out/checkpoints`` when called again with the same ``out``. A finished run raises
    AlreadyTrained instead of training again, unless ``restart`` (which discards its checkpoints).
    """
    from pneumoscan.models import MIN_INPUT_SIZE

    minimum = MIN_INPUT_SIZE.get(config.architecture, 32)
    if config.input_size < minimum:
        raise RecipeError(f"{config.architecture} needs --input-size of at least {minimum} px")
    _check_finished(out, restart)
    configure_devices()
    import keras

    keras.utils.set_random_seed(config.rng_seed)
    train_set, val_set = train_validation(data_dir, config.val_fraction, config.seed)
    if not val_set or len({e.label for e in val_set}) < 2:
        raise RecipeError("validation split needs both classes: add images or raise --val-fraction")
    log.info("train %d images, validation %d images (%d patients)", len(train_set), len(val_set),
             len({e.patient for e in val_set}))
    x_train, y_train = load_images(train_set, config.input_size, policy), labels_of(train_set)
    x_val, y_val = load_images(val_set, config.input_size, policy), labels_of(val_set)

    counts = np.bincount(y_train, minlength=2)
    class_weight = {c: float(len(y_train) / (2 * max(counts[c], 1))) for c in (0, 1)}
    steps = math.ceil(len(x_train) / config.batch_size)

    model = _initial_model(config)
    if config.freeze_bn:
        log.info("froze %d BatchNormalization layers", _freeze_batchnorm(model))
    model.compile(
        optimizer=_fine_tuning_optimizer(model, config, steps),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    history_csv = checkpoints / "history.csv"
    best_path = checkpoints / "best.keras"
    # Order matters: with EMA, the averaged weights are swapped in before the backup and the checkpoint
    # are written at an epoch's end, and swapped out again at the next epoch's start (also after a resume).
    callbacks: list[Any] = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema > 0 else []
    callbacks += [
        keras.callbacks.BackupAndRestore(str(checkpoints / "resume"), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_auc", mode="max", save_best_only=True,
                                        initial_value_threshold=_best_so_far(history_csv)),
        keras.callbacks.CSVLogger(str(history_csv), append=True),
    ]
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch(e, logs or {})))
    model.fit(_dataset(x_train, y_train, config, train=True, class_weight=class_weight), epochs=config.epochs,
              validation_data=_dataset(x_val, y_val, config, train=False),
              callbacks=callbacks, verbose=0, shuffle=False)

    import pneumoscan.models.layers  # noqa: F401  (registers the custom layers for loading)

    best = keras.models.load_model(best_path, compile=False)
    calibration, val_scores, threshold = validation_calibration(best, val_set, config.input_size, policy,
                                                                config.min_sensitivity)
    _plot_curves(history_csv, out / "training_curves.png")
    warnings = validation_warnings(y_val, val_scores)
    for warning in warnings:
        log.warning("%s", warning)
    now = datetime.now(UTC)
    card = ModelCard(
        version=config.version or f"{config.architecture}-{now:%Y%m%d-%H%M%S}",
        architecture=config.architecture,
        input_size=config.input_size,
        preprocessing=PREPROCESSING,
        threshold=threshold,
        threshold_rule=threshold_rule(config.min_sensitivity),
        labels=tuple(LABELS),
        output="probability of PNEUMONIA",
        created_at=now.isoformat(timespec="seconds"),
        parameters=int(best.count_params()),
        training={
            "data": str(data_dir.name),
            "config": dataclasses.asdict(config),
            "split": (f"validation carved from train by patient ({config.val_fraction:.0%} of each class's "
                      f"images, seed {config.seed}); the test split was not read"),
            "train_images": _class_counts(train_set),
            "validation_images": _class_counts(val_set),
            "class_weight": class_weight,
            "epochs_run": len(_read_rows(history_csv)),
        },
        calibration=calibration,
        validation_metrics=metrics.summarize(y_val, val_scores, threshold),
        warnings=tuple(warnings),
        extra={"test_metrics": None},  # until `evaluate --update-card` measures the test split
    )
    bundle = write_bundle(out, best, card)
    log.info("bundle written to %s: %s", out, json.dumps(card.validation_metrics))
    return bundle


def validation_calibration(model: Any, val_set: list[Example], size: int, policy: DecodePolicy,
                           min_sensitivity: float) -> tuple[Calibration, np.ndarray, float]:
    """Score validation exactly as the worker decodes it, fit the temperature, then choose the threshold.

    Returns (the card's calibration entry, calibrated validation scores, threshold on those scores).
    """
    x_val = load_images(val_set, size, policy, exact=True)[..., None]
    raw = np.concatenate([np.asarray(model(x_val[i:i + 64], training=False)).ravel()
                          for i in range(0, len(x_val), 64)])
    return calibrate.fit_on_validation(labels_of(val_set), raw, min_sensitivity)


def recalibrate(bundle_dir: Path, data_dir: Path, policy: DecodePolicy) -> ModelBundle:
    """Refit a bundle's temperature and threshold on the validation split recorded in its card.

    For bundles made before calibration existed; the weights and the version stay as they are.
    """
    from pneumoscan.models.bundle import load_bundle, write_card

    bundle = load_bundle(bundle_dir, verify=True)
    data, val_fraction, seed = bundle.card.validation_split
    if data != data_dir.name or val_fraction is None:
        raise RecipeError(f"{bundle_dir} was trained on {data!r}, not on {data_dir.name!r}, "
                         "or its card does not record the validation split")
    _, val_set = train_validation(data_dir, val_fraction, 0 if seed is None else seed)
    rule = bundle.card.min_sensitivity
    calibration, scores, threshold = validation_calibration(bundle.model, val_set, bundle.input_size, policy, rule)
    warnings = bundle.card.warnings
    card = dataclasses.replace(
        bundle.card, calibration=calibration, threshold=threshold,
        threshold_rule=threshold_rule(rule),
        validation_metrics=metrics.summarize(labels_of(val_set), scores, threshold),
        warnings=tuple(validation_warnings(labels_of(val_set), scores)) if warnings is None else warnings)
    write_card(bundle_dir, card)
    return ModelBundle(bundle_dir, card)


def _check_finished(out: Path, restart: bool) -> None:
    """Refuse to retrain a finished bundle (a new version would reclassify every image) unless ``restart``."""
    import shutil

    from pneumoscan.models.bundle import CARD_FILE, BundleError, read_card

    if not (out / CARD_FILE).is_file():
        return
    if not restart:
        try:
            version = read_card(out).version
        except BundleError:
            version = "?"
        raise AlreadyTrained(f"{out} already holds the finished bundle {version}; nothing to do "
                             "(pass --restart to train it again from scratch)")
    for path in (out / "checkpoints", out / CARD_FILE):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def validation_warnings(y_val: np.ndarray, scores: np.ndarray) -> list[str]:
    """What makes a model's validation figures untrustworthy, for the log, the CLI and the card."""
    counts = np.bincount(y_val, minlength=2)
    warnings = []
    if counts.min() < MIN_VALIDATION_PER_CLASS:
        warnings.append(f"validation is tiny ({counts[0]} NORMAL, {counts[1]} PNEUMONIA; fewer than "
                        f"{MIN_VALIDATION_PER_CLASS} of a class): its AUC and threshold are unreliable")
    auc = metrics.roc_auc(y_val, scores)
    if auc < 0.5:
        warnings.append(f"validation ROC AUC is {auc:.3f}, worse than chance: this model has not learned")
    return warnings


def _initial_model(config: TrainConfig) -> Any:
    from pneumoscan.models.architectures import build_model

    if config.init is None:
        return build_model(config.architecture, config.input_size, weights=config.weights,
                           equalize=config.equalize)
    import keras

    import pneumoscan.models.layers  # noqa: F401  (registers the custom layers for loading)
    from pneumoscan.models.bundle import MODEL_FILE, load_bundle

    start = load_bundle(Path(config.init), verify=True)
    if (start.card.architecture, start.input_size) != (config.architecture, config.input_size):
        raise RecipeError(f"--init bundle {config.init} is {start.card.architecture} at "
                         f"{start.input_size} px, not {config.architecture} at {config.input_size} px")
    log.info("starting from the weights of %s (%s)", start.version, config.init)
    model = keras.models.load_model(start.path / MODEL_FILE, compile=False)
    has = any(layer.name == "equalize" for layer in model.layers)
    if has != config.equalize:
        raise RecipeError(f"--init bundle {config.init} {'equalizes' if has else 'does not equalize'} its input: "
                         f"{'add' if has else 'drop'} --equalize to match it")
    return model


def _class_counts(examples: list[Example]) -> dict[str, int]:
    counts = np.bincount(labels_of(examples), minlength=2)
    by_label = {name: int(n) for name, n in zip(LABELS, counts, strict=True)}
    return {**by_label, "patients": len({e.patient for e in examples})}


def _read_rows(history_csv: Path) -> list[dict[str, str]]:
    with history_csv.open() as fh:
        return list(csv.DictReader(fh))
