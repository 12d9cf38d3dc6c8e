"""Reviewing and administration: `review`, `calibrate`, `users` and `db`."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pneumoscan.cli._common import EnumChoice, _bundle, _database, _friendly, _settings
from pneumoscan.config import Settings
from pneumoscan.domain import AuditAction, Label, Role
from pneumoscan.services import calibration as site_calibration

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from pneumoscan.db.schema import OperatingPoint


@click.command()
@click.argument("image_id", type=click.IntRange(1))
@click.option("--label", required=True, type=EnumChoice(Label, case_sensitive=False), help="The reviewer's reading.")
@click.option("--reviewer", required=True, help="Who reviewed the image: an enabled user (`pneumoscan users list`).")
@click.option("--comment", help="Free text kept with the review.")
@click.pass_context
@_friendly
def review(ctx: click.Context, image_id: int, label: Label, reviewer: str, comment: str | None) -> None:
    """Record a person's reading of IMAGE_ID (from `results`). Reviews are appended, never edited."""
    from pneumoscan.db.audit import add_event
    from pneumoscan.db.reviews import add_review
    from pneumoscan.db.users import enabled_account
    from pneumoscan.services.audit import CLI_ADDRESS

    with _database(_settings(ctx)).begin() as session:
        if enabled_account(session, reviewer) is None:  # reviews are tied to accounts everywhere
            raise click.BadParameter(f"{reviewer!r} is not an enabled user (see `pneumoscan users list`)",
                                     param_hint="--reviewer")
        saved = add_review(session, image_id, reviewer, label, comment)
        add_event(session, AuditAction.REVIEW, reviewer, CLI_ADDRESS, image_id, label)
    click.echo(f"review {saved.id}: image {image_id} is {saved.label} according to {saved.reviewer}")


@click.command()
@click.option("--from-reviews", is_flag=True, help="Fit on the images reviewed at this site.")
@click.option("--validation", "validation_data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Instead: refit the model bundle's own temperature and threshold on the validation split "
                   "of this DATA_DIR that it was trained with (for bundles made before calibration).")
@click.option("--target-sensitivity", type=click.FloatRange(0.5, 1), default=site_calibration.TARGET_SENSITIVITY,
              show_default=True,
              help="The share of new pneumonias to expect above the threshold, estimated from the reviewed ones.")
@click.option("--min-reviews", type=click.IntRange(1), default=site_calibration.MIN_REVIEWS, show_default=True,
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
    settings = _settings(ctx)
    if validation_data is not None:
        _refit_bundle(settings, validation_data)
        return
    if not from_reviews:
        raise click.UsageError("say what to fit on: --from-reviews, or --validation DATA_DIR")
    bundle, sessions = _bundle(settings), _database(settings)
    if show_history:
        _print_history(site_calibration.history(sessions, bundle.version))
    elif undo:
        undone = site_calibration.undo(sessions, bundle)
        click.echo(f"withdrew operating point {undone.point.id}; threshold is {undone.threshold:.4f} again, "
                   f"{undone.relabelled} labels changed")
    else:
        fitted = site_calibration.fit(sessions, bundle, target_sensitivity=target_sensitivity, min_reviews=min_reviews)
        _print_fitted(bundle.version, fitted)


def _refit_bundle(settings: Settings, data_dir: Path) -> None:
    """Refit the bundle's own temperature and threshold on its validation split, and say what changed."""
    from pneumoscan.models.train import recalibrate

    bundle = recalibrate(settings.model_path, data_dir, settings.decode_policy)
    calibration = bundle.card.calibration
    if calibration is None:  # recalibrate always fits one
        raise click.ClickException(f"{bundle.path}: no calibration was written")
    before, after = calibration.before, calibration.after
    click.echo(f"{bundle.version}: temperature {calibration.temperature:.3f}, threshold "
               f"{bundle.threshold:.4f}; validation NLL {before['nll']:.4f} -> "
               f"{after['nll']:.4f}, ECE {before['ece']:.4f} -> {after['ece']:.4f}")


def _print_history(points: Iterable[OperatingPoint]) -> None:
    for p in points:
        state = f"undone {p.undone_at:%Y-%m-%d %H:%M}" if p.undone_at else "in force"
        click.echo(f"{p.id}  {p.created_at:%Y-%m-%d %H:%M}  {p.previous_threshold:.4f} -> {p.threshold:.4f}  "
                   f"{len(json.loads(p.review_ids))} reviews  {p.relabelled} relabelled  {state}")


def _print_fitted(model_version: str, fitted: site_calibration.Fitted) -> None:
    point, figures = fitted.point, fitted.figures
    click.echo(f"operating point {point.id} for {model_version}: threshold {point.previous_threshold:.4f} -> "
               f"{point.threshold:.4f} from {fitted.reviewed} reviews; on them: sensitivity "
               f"{figures['sensitivity']:.3f}, specificity {figures['specificity']:.3f}, accuracy "
               f"{figures['accuracy']:.3f}; sensitivity to expect on new cases {figures['expected_sensitivity']:.3f}; "
               f"{point.relabelled} labels changed (undo with `pneumoscan calibrate --from-reviews --undo`)")


def _audit(session: Session, action: AuditAction, detail: str) -> None:
    """Record a user change made on the command line (the actor is the operating system's user)."""
    from pneumoscan.db.audit import add_event
    from pneumoscan.services.audit import CLI_ADDRESS

    add_event(session, action, f"{CLI_ADDRESS}:{getpass.getuser()}", CLI_ADDRESS, detail=detail)


@click.group()
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
@click.option("--role", type=EnumChoice(Role), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.pass_context
@_friendly
def users_add(ctx: click.Context, name: str, role: Role, password_stdin: bool) -> None:
    """Add a user (passwords are kept only as argon2 hashes)."""
    from pneumoscan.db.users import add_user, use_password_hashing

    password = _password(password_stdin)
    settings = _settings(ctx)
    use_password_hashing(settings.password_hashing)
    with _database(settings).begin() as session:
        account = add_user(session, name, role, password)
        _audit(session, AuditAction.USER_ADD, f"{name} as {role}")
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
    _set_disabled(ctx, name, True)


@users.command("enable")
@click.argument("name")
@click.pass_context
@_friendly
def users_enable(ctx: click.Context, name: str) -> None:
    """Enable a disabled user, or unlock one locked after failed sign-ins."""
    _set_disabled(ctx, name, False)


def _set_disabled(ctx: click.Context, name: str, disabled: bool) -> None:
    from pneumoscan.db.users import set_disabled

    with _database(_settings(ctx)).begin() as session:
        set_disabled(session, name, disabled)
        _audit(session, AuditAction.USER_DISABLE if disabled else AuditAction.USER_ENABLE, name)
    click.echo(f"{'disabled' if disabled else 'enabled'} {name}")


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
            revoked = revoke_tokens(session, name)
            _audit(session, AuditAction.TOKEN_REVOKE, f"{revoked} tokens of {name}")
            click.echo(f"revoked {revoked} tokens of {name}")
            return
        token = issue_token(session, name)
        _audit(session, AuditAction.TOKEN_ISSUE, f"a token for {name}")
    click.echo(token)


@click.group()
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

