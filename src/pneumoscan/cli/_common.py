"""What every `pneumoscan` command shares: settings, database, bundle and dispatcher set-up, errors and output."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from functools import cache, partial, wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pneumoscan.config import Settings
from pneumoscan.db import DatabaseError, open_database
from pneumoscan.domain import Result
from pneumoscan.models.bundle import BundleError, ModelBundle, load_bundle
from pneumoscan.models.engine import EngineConfig
from pneumoscan.models.pretrained import WeightsError

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


@cache
def _expected() -> tuple[type[Exception], ...]:
    """The errors a user causes and can fix, each with a message that says what to change.

    Imported when an error happens, so that no command's start pays for the modules that raise them.
    """
    from pneumoscan.db.reviews import UnknownImage
    from pneumoscan.db.users import UserError
    from pneumoscan.models.dataset import DatasetError
    from pneumoscan.models.recipe import RecipeError
    from pneumoscan.services.calibration import NothingToUndo, TooFewReviews

    return (BundleError, DatabaseError, DatasetError, RecipeError, UnknownImage, UserError, WeightsError,
            TooFewReviews, NothingToUndo, NotADirectoryError)


def _friendly(func: F) -> F:
    """Turn the project's expected errors into one-line messages; anything else is a bug and keeps its traceback.

    Expected: the project's own error types for bad input, settings, data or bundles, and an OSError on a
    path the user gave (it names the file). A ValueError or an OSError without a file is not caught.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, _expected()) or (isinstance(exc, OSError) and exc.filename is not None):
                raise click.ClickException(str(exc)) from None
            if _broker_down(exc):
                raise click.ClickException(f"cannot reach the broker: {exc}") from None
            raise

    return wrapper  # type: ignore[return-value]


def _broker_down(exc: Exception) -> bool:
    """A broker that cannot be reached (kombu's OperationalError), imported only when something failed."""
    from kombu.exceptions import OperationalError

    return isinstance(exc, OperationalError)


class EnumChoice(click.Choice):
    """A choice among an enum's values, as a user types them (and as help lists them), that gives the member."""

    def __init__(self, enum: type[StrEnum], case_sensitive: bool = True) -> None:
        self.enum = enum
        super().__init__([member.value for member in enum], case_sensitive)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return self.enum(super().convert(value, param, ctx))


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.ensure_object(dict)["settings"]
    return settings


def _once(key: str, make: Callable[[], Any]) -> Any:
    """One ``make()`` per command run (kept on click's root context): a database or bundle opened, and said, once."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return make()
    kept = ctx.find_root().ensure_object(dict).setdefault("once", {})
    if key not in kept:
        kept[key] = make()
    return kept[key]


def check_sqlite_folder(settings: Settings) -> None:
    """Refuse a SQLite file in a folder that does not exist (a typo would start an empty database there).

    The default data folder is the exception: it is made on first use.
    """
    url = settings.sqlalchemy_url
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:" or not settings.database_url:
        return
    folder = Path(url.removeprefix("sqlite:///")).expanduser().parent
    if not folder.is_dir():
        raise click.ClickException(f"PNEUMOSCAN_DATABASE_URL names a SQLite file in {folder}, which does not exist; "
                                   "create the folder first, or fix the URL")


def shown_url(url: str) -> str:
    """A database or broker URL as the CLI prints it: its password hidden by SQLAlchemy's own rendering."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a URL)"


def _database(settings: Settings) -> Any:
    def make() -> Any:
        url = settings.sqlalchemy_url
        check_sqlite_folder(settings)
        err.print(f"database: {shown_url(url)}", style="dim")
        return open_database(url)

    return _once(f"database {settings.sqlalchemy_url}", make)


def _bundle(settings: Settings) -> ModelBundle:
    bundle: ModelBundle = _once(f"bundle {settings.model_path}", partial(_load_bundle, settings))
    return bundle


def _load_bundle(settings: Settings) -> ModelBundle:
    bundle = load_bundle(settings.model_path, runtime=EngineConfig.from_settings(settings))
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
    err.print(f"broker: {shown_url(url)}", style="dim")
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
    from pneumoscan.worker.client import CeleryDispatcher

    return CeleryDispatcher(_celery_app(settings), _database(settings), on_submit=on_submit)


def _progress(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err)

