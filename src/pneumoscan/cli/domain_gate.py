"""`pneumoscan model fit-domain` and `model domain-check`: the gate that marks images unlike the validated ones."""

from __future__ import annotations

from pathlib import Path

import click

from pneumoscan.cli._common import _friendly, _progress, _settings
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.engine import EngineConfig

_DATA = click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))


@click.command("fit-domain")
@_DATA
@click.pass_context
@_friendly
def fit_domain(ctx: click.Context, data_dir: Path) -> None:
    """Fit the model's domain gate on DATA_DIR/train (validation held out, carved by patient as the card says;
    the test split is never read) and write it into the bundle: domain.npz and the card's `domain`."""
    from pneumoscan.models.domain_fit import fit_domain as fit

    settings = _settings(ctx)
    bundle = load_bundle(settings.model_path, verify=True, runtime=EngineConfig.from_settings(settings))
    with _progress("fitting the domain gate") as progress:
        task = progress.add_task("features", total=None)
        record = fit(bundle, data_dir, settings.decode_policy, on_batch=lambda n: progress.advance(task, n))
    click.echo(f"{bundle.version}: domain gate fitted on {record['fitted_on']}; threshold {record['threshold']:.2f} "
               f"marks {record['validation_marked']:.1%} of {record['validation_n']} validation images "
               f"(validated ages {', '.join(record['age_bands'])})")


@click.command("domain-check")
@_DATA
@click.option("--split", default="validation", show_default=True,
              help="`validation` (the card's own), or a folder under DATA_DIR such as `test`.")
@click.option("--update-card", is_flag=True, help="Record the share marked in the card's `domain` record.")
@click.pass_context
@_friendly
def domain_check(ctx: click.Context, data_dir: Path, split: str, update_card: bool) -> None:
    """The share of a split that the model's domain gate marks as outside the validated population."""
    from pneumoscan.models.domain_fit import domain_share

    settings = _settings(ctx)
    bundle = load_bundle(settings.model_path, verify=True, runtime=EngineConfig.from_settings(settings))
    with _progress(f"scoring {split}") as progress:
        task = progress.add_task(split, total=None)
        figures = domain_share(bundle, data_dir, split, settings.decode_policy, update_card=update_card,
                               on_batch=lambda n: progress.advance(task, n))
    click.echo(f"{bundle.version}, {split}: {figures['marked']} of {figures['n']} images marked out "
               f"({figures['share']:.1%}; median score {figures['score_median']:.1f}, threshold "
               f"{figures['threshold']:.1f})")
