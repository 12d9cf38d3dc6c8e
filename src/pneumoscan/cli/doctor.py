"""`doctor`: is this install ready? Every dependency checked, in one screen."""

from __future__ import annotations

from pathlib import Path

import click

from pneumoscan.cli._common import _friendly, _settings


@click.command()
@click.option("--inbox", type=click.Path(file_okay=False, path_type=Path),
              help="The folder `watch` or `scheduler` is given, to check it too.")
@click.pass_context
@_friendly
def doctor(ctx: click.Context, inbox: Path | None) -> None:
    """Check the database, the broker, the salt, the folders, the DICOM and DICOMweb destinations and the model.

    One line per check; exits 1 if any fails. Changes nothing (the database is not migrated).
    """
    from pneumoscan.services.doctor import run_checks

    failed = 0
    for check in run_checks(_settings(ctx), inbox):
        failed += not check.ok
        mark = click.style("ok  ", fg="green") if check.ok else click.style("FAIL", fg="red", bold=True)
        click.echo(f"{mark} {check.name}: {check.detail}")
    if failed:
        raise click.ClickException(f"{failed} check{'s' if failed > 1 else ''} failed")
