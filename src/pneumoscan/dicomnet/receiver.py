"""The DICOM receiver: a C-ECHO and C-STORE SCP that writes each instance, as received, into a watched folder.

Each instance becomes ``SOPInstanceUID.dcm``, written to a temporary name that the ignore rule skips
(``inputs.staging_name``), flushed to disk and renamed into place, so the watcher never sees half a file and its
readiness and dedupe rules apply as to any dropped file. Success is answered only once the file is
on disk; a failure to write it answers "out of resources", so the sender keeps the instance and
retries. A re-sent instance leaves the file as it is, whatever transfer syntax it comes in this time:
the first copy of a SOP Instance UID is kept, as a PACS keeps it (Orthanc's OverwriteInstances false).
Rewriting it would give the watcher new content for the same instance, so a second image, a second
prediction and a reopened study.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from pneumoscan.inputs import staging_name

log = logging.getLogger(__name__)

SUCCESS, OUT_OF_RESOURCES, INVALID_INSTANCE = 0x0000, 0xA700, 0x0117
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PLACING = threading.Lock()  # two associations storing the same instance at once: one file, the first


def transfer_syntaxes() -> list[str]:
    """Every transfer syntax whose pixel data pydicom can decode here: what pneumoscan's decoder reads.

    As pydicom's decoders report it (``get_decoder(uid).is_available``): the uncompressed and deflated
    syntaxes always, the compressed ones where a plugin for them is installed (pylibjpeg, pyjpegls...).
    A sender offered nothing else transcodes to one of these, or keeps the instance.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    available = []
    for syntax in AllTransferSyntaxes:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:  # no decoder at all in pydicom (video, audio, JPEG XL...)
            continue
        if decoder.is_available:
            available.append(str(syntax))
    return available


def _without_network_tracebacks(record: logging.LogRecord) -> bool:
    """Log filter: a connection that drops (an OSError in pynetdicom's reader) is one line, not a traceback.

    A sender that dies or a network that fails mid-association is an event to note, not a fault of ours;
    pynetdicom aborts the association and nothing of it is stored.
    """
    if record.exc_info and isinstance(record.exc_info[1], OSError):
        record.exc_info, record.exc_text = None, None
    return True


class Receiver:
    """A DICOM storage SCP writing into ``spool``; ``start`` listens in background threads, ``stop`` ends it."""

    def __init__(self, spool: Path, *, port: int, ae_title: str = "PNEUMOSCAN",
                 allowed_aes: frozenset[str] = frozenset(), host: str = "0.0.0.0") -> None:
        self.spool, self.port, self.host = spool, port, host
        self.ae_title, self.allowed_aes = ae_title, allowed_aes
        self._server: Any = None

    def _ae(self) -> Any:
        from pynetdicom import AE, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.ae_title)
        syntaxes = transfer_syntaxes()
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        if self.allowed_aes:
            ae.require_calling_aet = sorted(self.allowed_aes)  # others are rejected at association
        ae.maximum_associations = 32
        return ae

    def start(self) -> None:
        from pynetdicom import evt

        self.spool.mkdir(parents=True, exist_ok=True)
        dul = logging.getLogger("pynetdicom.dul")
        if _without_network_tracebacks not in dul.filters:
            dul.addFilter(_without_network_tracebacks)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_C_ECHO, lambda _event: SUCCESS)]
        self._server = self._ae().start_server((self.host, self.port), block=False, evt_handlers=handlers)
        log.info("DICOM receiver %s listening on %s:%d, writing to %s", self.ae_title, self.host, self.port, self.spool)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID or "").strip()
        calling = event.assoc.requestor.ae_title
        if not _UID.match(uid) or len(uid) > 64:
            log.warning("refused an instance from %s: %r is not a SOP Instance UID", calling, uid[:80])
            return INVALID_INSTANCE
        try:
            data = event.encoded_dataset()  # preamble, file meta and the data set's bytes as they came
            written = write_instance(self.spool, uid, data)
        except OSError as exc:
            log.error("could not store %s from %s: %s; answered out of resources, the sender will retry",
                      uid, calling, exc)
            return OUT_OF_RESOURCES
        log.info("%s %s from %s", "stored" if written else "already had", uid, calling)
        return SUCCESS


def write_instance(spool: Path, uid: str, data: bytes) -> bool:
    """Write ``data`` as ``spool/uid.dcm`` atomically; False if that instance is already there (left as it is)."""
    target = spool / f"{uid}.dcm"
    if target.exists():
        return False
    temporary = spool / staging_name(target.name)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        with _PLACING:
            if target.exists():  # stored meanwhile by another association
                temporary.unlink()
                return False
            os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(spool, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
    return True
