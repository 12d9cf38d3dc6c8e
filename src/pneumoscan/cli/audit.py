"""The audit trail on the command line: `pneumoscan audit [--user U] [--image ID] [--since D] [--prune]`."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from pneumoscan.cli._common import EnumChoice, _database, _friendly, _settings
from pneumoscan.domain import AuditAction


@click.command()
@click.option("--user", help="Only events by this user name (or, for failed sign-ins, the name tried).")
@click.option("--image", "image_id", type=click.IntRange(1, 2**63 - 1), help="Only events about this image id.")
@click.option("--action", type=EnumChoice(AuditAction), help="Only this kind of event.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Only events at or after this date or time (UTC).")
@click.option("--limit", type=click.IntRange(1, 1000), default=200, show_default=True, help="Newest events shown.")
@click.option("--prune", is_flag=True, help="Delete the events older than PNEUMOSCAN_AUDIT_RETENTION_DAYS instead.")
@click.pass_context
@_friendly
def audit(ctx: click.Context, user: str | None, image_id: int | None, action: AuditAction | None,
          since: datetime | None, limit: int, prune: bool) -> None:
    """Print the audit trail, newest first: who opened, reviewed, calibrated, changed or signed in, when, from where."""
    from pneumoscan.db.audit import AuditQuery
    from pneumoscan.services import audit as audit_trail

    settings = _settings(ctx)
    if prune:
        click.echo(f"pruned {audit_trail.prune(_database(settings), settings)} events older than "
                   f"{settings.audit_retention_days} days")
        return
    query = AuditQuery(user=user, image_id=image_id, action=action, limit=limit,
                       since=since.replace(tzinfo=UTC) if since is not None else None)
    for e in audit_trail.search(_database(settings), query):
        click.echo(f"{e.at:%Y-%m-%d %H:%M:%S}\t{e.actor or '-'}\t{e.action}\t{e.image_id or '-'}\t"
                   f"{e.address or '-'}\t{e.detail or ''}")
