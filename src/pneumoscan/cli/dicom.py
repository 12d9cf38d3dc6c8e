"""DICOM networking: `receive`, and the receiver that `watch` and `scheduler` run beside the watcher."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from pneumoscan.cli._common import _database, _friendly, _settings, err
from pneumoscan.config import Settings, names


@contextmanager
def receiver_beside(settings: Settings, folder: Path) -> Iterator[None]:
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


@click.command()
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
    stopped = _stop_on_signal()
    err.print(f"receiving as {title} on {host}:{receiver.port} into {folder}"
              + (f" from {', '.join(sorted(allowed))}" if allowed else " from any AE") + "; Ctrl-C to stop")
    stopped.wait()
    receiver.stop()
    err.print("stopped")


def _stop_on_signal() -> threading.Event:
    """An event that Ctrl-C or SIGTERM sets, from now on."""
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    return stopped



@click.command("purge-spool")
@click.option("--inbox", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The folder `watch` or `scheduler` is given: its receiver's spool (INBOX/received) is purged too; "
                   "the inbox's own files never are.")
@click.option("--days", type=click.FloatRange(0, min_open=True),
              help="Received files of studies delivered this many days ago [default: PNEUMOSCAN_SPOOL_RETENTION_DAYS].")
@click.pass_context
@_friendly
def purge_spool(ctx: click.Context, inbox: Path | None, days: float | None) -> None:
    """Remove received DICOM files of studies complete and delivered N days ago (the nightly job does this too).

    Only files the receiver wrote (named by their SOP Instance UID, unchanged since) under its spool folders go;
    the database keeps every result and study.
    """
    from pneumoscan.services import retention

    settings = _settings(ctx)
    days = days if days is not None else settings.spool_retention_days
    if days is None:
        raise click.UsageError("say how old: --days N, or set PNEUMOSCAN_SPOOL_RETENTION_DAYS")
    folders = retention.spool_folders(settings, inbox)
    done = retention.purge_spool(_database(settings), folders, days)
    click.echo(f"removed {done.removed} received files older than {days:g} days from {', '.join(map(str, folders))}"
               + (f"; left {done.kept} not as the receiver wrote them" if done.kept else ""))
