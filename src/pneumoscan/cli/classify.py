"""Classifying: `scan`, `watch`, `worker`, `scheduler`, `reclassify` and `results`."""

from __future__ import annotations

import csv
import json
import logging
import signal
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pneumoscan.cli._common import (
    EnumChoice,
    _bundle,
    _celery_app,
    _classifier,
    _database,
    _dispatcher,
    _friendly,
    _progress,
    _settings,
    err,
)
from pneumoscan.cli.dicom import receiver_beside
from pneumoscan.cli.tables import fitted_table
from pneumoscan.config import Settings
from pneumoscan.db.results import RESULT_FIELDS, ResultFilter, query_results
from pneumoscan.domain import Domain, Label, Outcome, Result, ReviewState, SkipReason, Sort, Status
from pneumoscan.models.bundle import BundleError, load_bundle


@click.command()
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.pass_context
@_friendly
def scan(ctx: click.Context, target: Path) -> None:
    """Classify TARGET (a file, or every file under a folder) once, then print a summary.

    Files already classified by the current model (same content) are skipped. Exits 0 even when
    some files are rejected; see `pneumoscan results --status rejected` for the reasons.
    """
    from pneumoscan.inputs import iter_files

    settings = _settings(ctx)
    classify = _classifier(settings)
    target = target.absolute()  # stored paths must mean the same file from any working directory
    paths = [str(p) for p in iter_files(target)] if target.is_dir() else [str(target)]
    columns = (TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("scan", total=len(paths))
        results = classify(paths, on_batch=lambda batch: progress.advance(task, len(batch)))
    _print_summary(results)


def _outcome(result: Result) -> str:
    """What happened to one file, in words: a skip says why."""
    if result.status != Outcome.SKIPPED:
        return str(result.status)
    if result.skip == SkipReason.DUPLICATE:
        return "skipped: same content as another file here"
    return "skipped: already classified"


def _print_summary(results: Sequence[Result]) -> None:
    """Files by outcome and label; with a domain gate, by domain too (out: outside the validated population)."""
    gated = any(r.domain for r in results)
    counts = Counter((_outcome(r), r.label or "", *((r.domain or "",) if gated else ())) for r in results)
    table = Table(title=f"{len(results)} files")
    for column in ("status", "label", *(("domain",) if gated else ()), "files"):
        table.add_column(column, justify="right" if column == "files" else "left")
    for key, n in sorted(counts.items()):
        table.add_row(*key, str(n))
    Console().print(table)
    if any(r.domain == Domain.OUT for r in results):
        err.print("domain out: outside the validated population; `pneumoscan results` says why")


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_context
@_friendly
def watch(ctx: click.Context, folder: Path) -> None:
    """Classify files already in FOLDER, then every new file once it is complete, until stopped.

    A file counts as complete when its size and modification time have not changed for the quiet
    period (PNEUMOSCAN_QUIET_PERIOD), or at once when a JPEG or PNG closed after writing or renamed
    into place ends with its end marker. Files are classified as soon as the previous batch is done.
    Stop with Ctrl-C or SIGTERM: the batch in hand is finished first. With PNEUMOSCAN_BROKER_URL set,
    batches are enqueued for `pneumoscan worker` processes instead, waiting up to
    PNEUMOSCAN_MAX_BATCH_WAIT for a fuller batch.
    """
    from pneumoscan.scheduler.batcher import MicroBatcher
    from pneumoscan.scheduler.watcher import Watcher

    settings = _settings(ctx)
    dispatcher = _dispatcher(settings, partial(_report_batch, verbose=logging.getLogger().level <= logging.INFO))
    # Inline dispatch blocks the loop, so the pipeline is idle whenever a file is waiting: send it now.
    batcher = MicroBatcher(dispatcher, settings.batch_size, settings.max_batch_wait, submit_when_idle=settings.embedded)
    watcher = Watcher(folder, batcher, settings.quiet_period)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: watcher.stop())
    with receiver_beside(settings, folder), _study_monitor(settings):
        err.print(f"watching {watcher.inbox}; Ctrl-C to stop")
        watcher.run()
    err.print("stopped")


def _report_batch(results: list[Result], verbose: bool) -> None:
    """One line per classified batch: what happened to its files; with -v, a line per file too."""
    counts = Counter(_outcome(r) + (f" {r.label}" if r.label else "") + (" out of domain" if r.domain == Domain.OUT
                                                                          else "") for r in results)
    err.print(f"{datetime.now():%H:%M:%S} batch of {len(results)}: "
              + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
    for r in results if verbose else ():
        err.print(f"  {r.path}: {r.label or _outcome(r)}"
                  + (f" ({r.probability:.3f})" if r.probability is not None else f" - {r.reason}")
                  + (f" [out of domain: {r.reason}]" if r.domain == Domain.OUT and r.probability is not None else ""))


@contextmanager
def _study_monitor(settings: Settings) -> Iterator[None]:
    """Embedded mode: complete quiet studies and send their results from this process (workers do it otherwise)."""
    if not settings.embedded:
        yield
        return
    from pneumoscan.dicomnet.stow import results_sender
    from pneumoscan.services.studies import StudyMonitor

    with StudyMonitor(_database(settings), settings, load_bundle(settings.model_path), results_sender(settings)):
        yield


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("-c", "--concurrency", type=click.IntRange(1), help="Pool processes [default: number of CPUs].")
@click.option("--max-tasks-per-child", type=click.IntRange(1),
              help="Replace a pool process after this many tasks [default: PNEUMOSCAN_MAX_TASKS_PER_CHILD].")
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Celery log level.")
@click.pass_context
@_friendly
def worker(ctx: click.Context, concurrency: int | None, max_tasks_per_child: int | None, loglevel: str) -> None:
    """Run a Celery worker that classifies the batches enqueued by `watch`, `scheduler` and `reclassify`.

    Each pool process loads the model once, after the fork. Needs PNEUMOSCAN_BROKER_URL and, for
    more than one machine, a shared PNEUMOSCAN_DATABASE_URL. Further arguments go to `celery worker`
    unchanged (for example --hostname NAME@%h).
    """
    from pneumoscan.worker.app import worker_argv

    settings = _settings(ctx)
    app = _celery_app(settings)
    app.worker_main(worker_argv(concurrency=concurrency, loglevel=loglevel, extra=ctx.args,
                                max_tasks_per_child=max_tasks_per_child or settings.max_tasks_per_child))


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_context
@_friendly
def scheduler(ctx: click.Context, folder: Path) -> None:
    """Watch FOLDER and enqueue complete files in batches, and run Celery beat (the nightly job), until stopped.

    The nightly reclassification runs at PNEUMOSCAN_NIGHTLY_AT, local time. Needs PNEUMOSCAN_BROKER_URL.
    """
    from pneumoscan.scheduler.batcher import MicroBatcher
    from pneumoscan.scheduler.watcher import Watcher
    from pneumoscan.worker.beat import BeatThread
    from pneumoscan.worker.client import CeleryDispatcher

    settings = _settings(ctx)
    app, sessions = _celery_app(settings), _database(settings)
    dispatcher = CeleryDispatcher(app, sessions)
    _requeue_stale(settings, sessions, dispatcher)
    watcher = Watcher(folder, MicroBatcher(dispatcher, settings.batch_size, settings.max_batch_wait),
                      settings.quiet_period)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: watcher.stop())
    with BeatThread(app, settings.data_dir / "celerybeat-schedule"), receiver_beside(settings, folder):
        err.print(f"watching {watcher.inbox}; nightly reclassification at {settings.nightly_at}; Ctrl-C to stop")
        watcher.run()
    err.print("stopped")


def _requeue_stale(settings: Settings, sessions: Any, dispatcher: Any) -> None:
    """Enqueue again what a previous run handed over and nobody finished: lost messages, dead workers."""
    from kombu.exceptions import OperationalError as BrokerDown

    from pneumoscan.worker.client import requeue_stale

    try:
        requeue_stale(sessions, dispatcher, settings.requeue_after, settings.batch_size)
    except (BrokerDown, OSError) as exc:  # beat's reaper tries again every PNEUMOSCAN_REQUEUE_AFTER / 3
        err.print(f"could not re-enqueue stale files at start ({exc}); beat's reaper will retry", style="yellow")


@click.command()
@click.option("--all", "everything", is_flag=True,
              help="Every image, whatever its status or predictions, decoded and triaged again (rejected ones too).")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Only images updated since this local date or time.")
@click.option("--status", type=EnumChoice(Status),
              help="Only images with this status (rejected ones only when asked for).")
@click.pass_context
@_friendly
def reclassify(ctx: click.Context, everything: bool, since: datetime | None, status: Status | None) -> None:
    """Run the current model on images it has not classified yet, and on failed ones (the nightly job).

    Old predictions stay; `results --all-versions` shows them. With PNEUMOSCAN_BROKER_URL set the
    batches are enqueued for the workers, otherwise they are classified here.
    """
    from pneumoscan.db.selection import ReclassifySelection
    from pneumoscan.services import reclassify as service

    settings = _settings(ctx)
    bundle, sessions = _bundle(settings), _database(settings)
    selection = ReclassifySelection(everything, _utc(since), status)
    total = service.count(sessions, bundle.version, selection)
    outcomes: Counter[str] = Counter()
    dispatcher = _dispatcher(settings, lambda results: outcomes.update(_outcome(r) for r in results))
    with _progress("reclassifying" if settings.embedded else "enqueuing") as progress:
        task = progress.add_task("reclassify", total=total)
        sent = service.reclassify(sessions, bundle.version, selection,
                                  lambda ids, paths: dispatcher.submit_images(ids, paths, everything),
                                  batch_size=settings.batch_size, on_batch=lambda n: progress.advance(task, n))
    detail = ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items()))
    click.echo(f"{sent} images enqueued for model {bundle.version}" if not settings.embedded else
               f"{sent} images sent through model {bundle.version}" + (f": {detail}" if detail else ""))


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.astimezone()).astimezone(UTC)


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")
    return value


@click.command()
@click.option("--status", type=EnumChoice(Status))
@click.option("--label", type=EnumChoice(Label, case_sensitive=False))
@click.option("--min-probability", type=click.FloatRange(0, 1), help="Lowest probability of pneumonia.")
@click.option("--max-probability", type=click.FloatRange(0, 1), help="Highest probability of pneumonia.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Only images updated since this local date or time.")
@click.option("--model-version", help="Predictions of this model version [default: the current model's].")
@click.option("--all-versions", is_flag=True, help="Show predictions of every model version.")
@click.option("--limit", type=click.IntRange(0), default=100, show_default=True,
              help="At most this many rows; 0 for all.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--sort", type=EnumChoice(Sort), default=Sort.NEWEST.value, show_default=True,
              help="newest: last updated first; probability: most suspicious first.")
@click.option("--path", "path_pattern", metavar="PATTERN",
              help="Only images seen at a path matching this glob (* and ?), e.g. '*/2026-12/*.dcm'; every copy "
                   "of a content counts.")
@click.option("--review", type=EnumChoice(ReviewState),
              help="Only predictions not yet reviewed, reviewed, or whose latest review disagrees with them.")
@click.option("--domain", type=EnumChoice(Domain),
              help="Only images in (or out of) the population the model was validated on (the domain gate).")
@click.option("--by", "by", type=click.Choice(["image", "study"]), default="image", show_default=True,
              help="study: one row per DICOM study (instances, assessed, label, probability, status, send state).")
@click.pass_context
@_friendly
def results(ctx: click.Context, status: Status | None, label: Label | None, min_probability: float | None,
            max_probability: float | None, since: datetime | None, model_version: str | None,
            all_versions: bool, limit: int, fmt: str, sort: Sort, path_pattern: str | None,
            review: ReviewState | None, domain: Domain | None, by: str) -> None:
    """List stored results, newest first (or by --sort), filtered and formatted for review or export."""
    from pneumoscan.db.results import COUNT_AT_MOST, count_results, model_versions

    settings = _settings(ctx)
    if by == "study":
        _print_studies(settings, limit, fmt)
        return
    version = model_version if model_version is not None or all_versions else _current_version(settings)
    filters = ResultFilter(status, label, min_probability, max_probability, _utc(since), version, limit or None, sort,
                           path_pattern, review, domain=domain)
    with _database(settings)() as session:
        if model_version is not None and model_version not in (known := model_versions(session)):
            raise click.ClickException(f"no predictions of model version {model_version!r}; known versions: "
                                       f"{', '.join(known) or 'none yet'}")
        rows = [{k: _cell(row[k]) for k in RESULT_FIELDS} for row in query_results(session, filters)]
        total = count_results(session, filters) if limit and len(rows) == limit else len(rows)
    _print_rows(rows, fmt, total, total >= COUNT_AT_MOST)


def _current_version(settings: Settings) -> str | None:
    """The configured model's version: the results shown by default; None before any model is configured."""
    try:
        return load_bundle(settings.model_path).version
    except BundleError:
        return None  # no model configured yet: show whatever is stored


def _print_studies(settings: Settings, limit: int, fmt: str) -> None:
    from pneumoscan.db.studies import STUDY_FIELDS, list_studies

    with _database(settings)() as session:
        studies = [{k: _cell(v) for k, v in row.items()} for row in list_studies(session, limit or None)]
    _print_rows(studies, fmt, len(studies), fields=STUDY_FIELDS,
                shown=("study_uid", "status", "instance_count", "assessed_count", "label", "probability",
                       "completed_at", "send_state", "last_send_error"))


def _print_rows(rows: list[dict[str, Any]], fmt: str, total: int, at_least: bool = False,
                fields: Sequence[str] = RESULT_FIELDS, shown: Sequence[str] | None = None) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        shown = shown or ("id", "path", "paths", "status", "label", "probability", "domain", "model_version",
                          "classified_at", "review_label", "reason")

        def text(row: dict[str, Any], key: str) -> str:
            value = row[key]
            if key == "probability" and value is not None:
                return f"{value:.3f}"
            return "" if value is None else str(value)

        if sys.stdout.isatty():  # fitted to the terminal, 80 columns included
            console = Console()
            console.print(fitted_table(rows, shown, console.width))
        else:  # piped: one tab-separated line per row, never wrapped
            click.echo("\t".join(shown))
            for row in rows:
                click.echo("\t".join(text(row, k).replace("\t", " ") for k in shown))
    more = " (raise --limit, or --limit 0 for all)" if total > len(rows) else ""
    err.print(f"{len(rows)} of {'at least ' if at_least else ''}{total} rows{more}", style="dim")
