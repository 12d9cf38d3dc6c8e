"""DICOMweb STOW-RS (PS3.18 10.5): the multipart reader and per-instance store behind POST /dicomweb/studies,
and the client that sends our results to a DICOMweb server's /studies.

An instance received by STOW-RS is written exactly as the C-STORE receiver writes one
(``receiver.write_instance``: atomic, idempotent, the first copy of a SOP Instance UID kept), under the
same rules: a SOP Instance UID that is a UID, a storage SOP class, a transfer syntax pneumoscan decodes.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import mmap
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pneumoscan.dicomnet.receiver import transfer_syntaxes, write_instance
from pneumoscan.dicomnet.sender import TIMEOUT, SendError, StoreSCU

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from pneumoscan.config import Settings

log = logging.getLogger(__name__)

DICOM, DICOM_JSON = "application/dicom", "application/dicom+json"
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE = "00081199", "00081198"
SOP_CLASS, SOP_INSTANCE, FAILURE_REASON = "00081150", "00081155", "00081197"
# PS3.18 table 10.5.3-1's failure reasons (PS3.4 status codes)
PROCESSING_FAILURE, OUT_OF_RESOURCES = 0x0110, 0xA700
SOP_CLASS_NOT_SUPPORTED, SYNTAX_NOT_SUPPORTED = 0x0122, 0xC122
DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0xA900, 0xC000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class MultipartError(ValueError):
    """The request body is not the multipart/related message its Content-Type announces."""


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` Content-Type; ValueError otherwise."""
    message = Message()
    message["content-type"] = content_type
    if message.get_content_type() != "multipart/related":
        raise ValueError(f"STOW-RS takes multipart/related; type=\"{DICOM}\", not {message.get_content_type()}")
    kind = str(message.get_param("type") or DICOM).lower()
    if kind != DICOM:
        raise ValueError(f"only {DICOM} parts are taken here (PS3.10 files), not {kind}")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 200:
        raise ValueError("the multipart/related Content-Type has no boundary")
    return boundary


def iter_parts(body: bytes | mmap.mmap, boundary: str) -> Iterator[tuple[str, int, int]]:
    """(Content-Type, start, end) of each part's content in a multipart body (RFC 2046)."""
    delimiter = b"--" + boundary.encode("latin-1")
    at = body.find(delimiter)
    if at < 0:
        raise MultipartError("the body has no part: its boundary never appears")
    while True:
        at += len(delimiter)
        if body[at:at + 2] == b"--":
            return
        line_end = body.find(b"\r\n", at)
        head_end = body.find(b"\r\n\r\n", line_end) if line_end >= 0 else -1
        if head_end < 0:
            raise MultipartError("a part's headers never end")
        headers = Message()
        for line in bytes(body[line_end + 2:head_end]).decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip()] = value.strip()
        start = head_end + 4
        end = _delimiter(body, b"\r\n" + delimiter, start)
        yield headers.get_content_type() if "content-type" in headers else DICOM, start, end
        at = end + 2


def _delimiter(body: bytes | mmap.mmap, delimiter: bytes, start: int) -> int:
    """Where the next delimiter line (CRLF--boundary, then -- or blanks and CRLF, RFC 2046 5.1.1) begins."""
    at = start
    while (at := body.find(delimiter, at)) >= 0:
        rest = body[at + len(delimiter):at + len(delimiter) + 80]
        if rest.startswith(b"--") or rest.lstrip(b" \t").startswith(b"\r\n"):
            return at
        at += 1
    raise MultipartError("the body ends inside a part (no closing boundary)")


@dataclass(frozen=True)
class Stored:
    """One part's outcome: its SOP class and instance (where readable), and None or the failure reason."""

    sop_class: str | None
    sop_instance: str | None
    failure: int | None = None
    why: str = ""


@cache
def _storage_classes() -> frozenset[str]:
    from pynetdicom import AllStoragePresentationContexts

    return frozenset(str(c.abstract_syntax) for c in AllStoragePresentationContexts if c.abstract_syntax)


@cache
def _syntaxes() -> frozenset[str]:
    return frozenset(transfer_syntaxes())


def store_part(spool: Path, content_type: str, data: bytes) -> Stored:
    """Check one part as the receiver checks an instance, and write it into ``spool`` as the receiver does."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    if content_type != DICOM:
        return Stored(None, None, CANNOT_UNDERSTAND, f"a part of type {content_type}, not {DICOM}")
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        sop_class, uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")).strip()
        meta = ds.file_meta
        syntax, meta_uid = str(meta.get("TransferSyntaxUID", "")), str(meta.get("MediaStorageSOPInstanceUID", ""))
    except (InvalidDicomError, EOFError, ValueError, TypeError, AttributeError, KeyError) as exc:
        return Stored(None, None, CANNOT_UNDERSTAND, f"not a DICOM PS3.10 file ({exc})")
    if not _UID.match(uid) or len(uid) > 64:
        return Stored(sop_class or None, None, CANNOT_UNDERSTAND, f"{uid[:80]!r} is not a SOP Instance UID")
    if meta_uid.strip() != uid:
        return Stored(sop_class, uid, DOES_NOT_MATCH, "the file meta's SOP Instance UID is not the data set's")
    if sop_class not in _storage_classes():
        return Stored(sop_class, uid, SOP_CLASS_NOT_SUPPORTED, f"{sop_class!r} is not a storage SOP class")
    if syntax not in _syntaxes():
        return Stored(sop_class, uid, SYNTAX_NOT_SUPPORTED, f"transfer syntax {syntax} cannot be decoded here")
    try:
        written = write_instance(spool, uid, data)
    except OSError as exc:
        log.error("could not store %s received by STOW-RS: %s", uid, exc)
        return Stored(sop_class, uid, OUT_OF_RESOURCES, "could not be written to disk")
    log.info("%s %s (STOW-RS)", "stored" if written else "already had", uid)
    return Stored(sop_class, uid)


def store_study(spool: Path, body: IO[bytes], boundary: str) -> list[Stored]:
    """Store each part of the multipart ``body`` (a file) into ``spool``; MultipartError if it is not one."""
    spool.mkdir(parents=True, exist_ok=True)
    body.seek(0, io.SEEK_END)
    if body.tell() == 0:
        raise MultipartError("the body is empty")
    with mmap.mmap(body.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        parts = list(iter_parts(mapped, boundary))  # the whole message is checked before anything is stored
        return [store_part(spool, kind, mapped[start:end]) for kind, start, end in parts]


def _item(stored: Stored) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if stored.sop_class:
        item[SOP_CLASS] = {"vr": "UI", "Value": [stored.sop_class]}
    if stored.sop_instance:
        item[SOP_INSTANCE] = {"vr": "UI", "Value": [stored.sop_instance]}
    if stored.failure is not None:
        item[FAILURE_REASON] = {"vr": "US", "Value": [stored.failure]}
    return item


def stow_reply(outcomes: Sequence[Stored]) -> tuple[int, dict[str, Any]]:
    """PS3.18's reply to a store: (HTTP status, DICOM JSON). 200 all stored, 202 some failed, 409 none stored."""
    done = [_item(s) for s in outcomes if s.failure is None]
    failed = [_item(s) for s in outcomes if s.failure is not None]
    reply: dict[str, Any] = {}
    if done:
        reply[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": done}
    if failed:
        reply[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    return (200 if not failed else 202 if done else 409), reply


# --- out: our results to a DICOMweb server ----------------------------------------------------------


class StowClient:
    """STOW-RS of a study's objects to ``url``/studies in one request; a Sender for ``services.studies``."""

    def __init__(self, url: str, *, user: str | None = None, password: str | None = None,
                 timeout: float = TIMEOUT) -> None:
        self.url, self.timeout = url.rstrip("/") + "/studies", timeout
        self._auth = None
        if user:
            self._auth = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")

    @classmethod
    def for_results(cls, settings: Settings) -> StowClient | None:
        """The client for PNEUMOSCAN_RESULTS_DICOMWEB_URL (and its user and password); None when none is set."""
        if not settings.results_dicomweb_url:
            return None
        return cls(settings.results_dicomweb_url, user=settings.results_dicomweb_user,
                   password=settings.results_dicomweb_password)

    @property
    def peer(self) -> str:
        return self.url

    def _open(self, request: urllib.request.Request) -> tuple[int, bytes]:
        """(HTTP status, body) of ``request`` with our credentials; SendError when the server does not answer."""
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise SendError(f"{self.peer} did not answer: {getattr(exc, 'reason', exc)}") from None

    def ping(self) -> str:
        """Ask the server what a send would (QIDO-RS ``/studies?limit=1``, with our credentials); its URL, or
        ``SendError`` with why not (no answer, or an HTTP error such as 401)."""
        status, text = self._open(urllib.request.Request(self.url + "?limit=1", headers={"Accept": DICOM_JSON}))
        if status not in (200, 204):
            raise SendError(f"{self.peer} answered HTTP {status}: {text[:200].decode('utf-8', 'replace').strip()}")
        return self.url

    def send(self, objects: Sequence[Dataset]) -> None:
        """POST ``objects`` as one multipart/related body; ``SendError`` unless the server stored each one."""
        from pydicom import dcmwrite

        boundary = secrets.token_hex(16)
        body = io.BytesIO()
        for item in objects:
            body.write(f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode())
            dcmwrite(body, item, enforce_file_format=True)
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        headers = {"Content-Type": f'multipart/related; type="{DICOM}"; boundary={boundary}', "Accept": DICOM_JSON}
        request = urllib.request.Request(self.url, data=body.getvalue(), headers=headers, method="POST")
        status, text = self._open(request)
        _check_reply(self.peer, status, text, [str(item.SOPInstanceUID) for item in objects])


def _check_reply(peer: str, status: int, text: bytes, sent: list[str]) -> None:
    """SendError unless the reply says that every instance of ``sent`` was stored."""
    try:
        reply = json.loads(text) if text.strip() else {}
    except ValueError:
        reply = {}
    reply = reply if isinstance(reply, dict) else {}
    failures = [(_value(item, SOP_INSTANCE), _value(item, FAILURE_REASON))
                for item in _items(reply, FAILED_SOP_SEQUENCE)]
    if failures:
        reasons = ", ".join(f"{uid}: 0x{int(code or 0):04X}" for uid, code in failures)
        raise SendError(f"{peer} answered HTTP {status}, failed: {reasons}")
    if status not in (200, 202):
        raise SendError(f"{peer} answered HTTP {status}: {text[:200].decode('utf-8', 'replace').strip()}")
    stored = {_value(item, SOP_INSTANCE) for item in _items(reply, REFERENCED_SOP_SEQUENCE)}
    if missing := [uid for uid in sent if uid not in stored]:
        raise SendError(f"{peer} answered HTTP {status} without storing {', '.join(missing)}")


def _items(reply: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = reply.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [item for item in values if isinstance(item, dict)] if isinstance(values, list) else []


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") if isinstance(item.get(tag), dict) else None
    return values[0] if isinstance(values, list) and values else None


def results_sender(settings: Settings) -> StoreSCU | StowClient | None:
    """How results go back to the PACS: by C-STORE (PNEUMOSCAN_RESULTS_DESTINATION) or STOW-RS
    (PNEUMOSCAN_RESULTS_DICOMWEB_URL); None when neither is set. Settings refuse both; so does this.
    """
    store, stow = StoreSCU.for_results(settings), StowClient.for_results(settings)
    if store is not None and stow is not None:
        raise ValueError("set PNEUMOSCAN_RESULTS_DESTINATION or PNEUMOSCAN_RESULTS_DICOMWEB_URL, not both")
    return stow or store
