"""The `pneumoscan` command: thin wrappers that turn arguments into library calls and print the outcome."""

from __future__ import annotations

import logging
import os
import sys

import click
from pydantic import ValidationError

from pneumoscan.cli import audit, classify, dicom, doctor, domain_gate, models, review, web
from pneumoscan.config import Settings

# TensorFlow's C++ info and warning lines off stderr, for every command that imports it (training and explain
# too, not only inference); set before any command can. An operator who wants them sets TF_CPP_MIN_LOG_LEVEL.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="pneumoscan")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Screen chest X-rays (JPEG, PNG, DICOM) for pneumonia and keep the results in a database.

    Settings come from PNEUMOSCAN_* environment variables; see the README for the list.
    """
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "setup plugin ..." on every start otherwise
    from pneumoscan.memory import keep_large_buffers

    keep_large_buffers()
    try:
        ctx.ensure_object(dict)["settings"] = Settings()
    except ValidationError as exc:
        problems = "; ".join((f"PNEUMOSCAN_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
                             + e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise click.ClickException(f"invalid settings: {problems}") from None


for _command in (
    classify.scan, classify.watch, classify.worker, classify.scheduler, classify.reclassify, classify.results,
    review.review, review.calibrate, review.users, review.db,
    models.train, models.ensemble, models.soup, models.evaluate, models.explain,
    dicom.receive, dicom.purge_spool,
    web.serve,
):
    main.add_command(_command)
main.add_command(doctor.doctor)
main.add_command(audit.audit)
models.model.add_command(domain_gate.fit_domain)
models.model.add_command(domain_gate.domain_check)
main.add_command(models.model)

__all__ = ["main"]
