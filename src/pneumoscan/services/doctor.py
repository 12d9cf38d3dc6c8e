"""`pneumoscan doctor`: one check per thing an install depends on, each a small function giving a typed Check."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pneumoscan.config import Settings

TIMEOUT = 5.0  # seconds any one network check may take
MIN_FREE_BYTES = 1 << 30  # a folder that receives files needs at least this much free disk
MIN_SALT_LENGTH = 16  # a shorter salt makes PatientID references guessable by trying likely IDs


@dataclass(frozen=True)
class Check:
    """One thing checked: what, whether it is fine, and in a few words what was found (or what to do)."""

    name: str
    ok: bool
    detail: str


def check_database(settings: Settings) -> Check:
    """Reachable, and migrated to this code's newest revision (read only: doctor migrates nothing)."""
    from pneumoscan.db import DatabaseError
    from pneumoscan.db.health import schema_state

    url = settings.sqlalchemy_url
    shown = url.rpartition("@")[2] if "@" in url else url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///")).expanduser()
        if not path.exists():
            made = not settings.database_url or path.parent.is_dir()  # the default folder is made on first use
            return Check("database", made, f"{path} does not exist yet; made on first use" if made
                         else f"{path.parent} does not exist: create it, or fix PNEUMOSCAN_DATABASE_URL")
    try:
        state = schema_state(url)
    except DatabaseError as exc:
        return Check("database", False, str(exc))
    if not state.at_head:
        at = f"is at revision {state.current}" if state.current else "has no pneumoscan schema yet"
        return Check("database", False, f"{shown} {at}, this code needs {state.head}: run `pneumoscan db upgrade`")
    return Check("database", True, f"{shown}, revision {state.head}")


def check_broker(settings: Settings) -> Check | None:
    """Reachable, and how many batches wait in its queue; None in embedded mode (no broker)."""
    from pneumoscan.broker import BrokerUnavailable, queue_depth

    if settings.broker_url is None:
        return None
    shown = settings.broker_url.rpartition("@")[2]
    try:
        depth = queue_depth(settings.broker_url, timeout=TIMEOUT)
    except BrokerUnavailable as exc:
        return Check("broker", False, f"{shown}: {exc.__cause__ or exc}")
    return Check("broker", True, f"{shown}, {depth} batch{'es' if depth != 1 else ''} waiting")


def check_model(settings: Settings) -> Check:
    """The bundle's model file matches the sha256 on its card, the model loads on the configured engine, and its
    domain gate (if it has one) is readable."""
    from pneumoscan.models.bundle import BundleError, load_bundle
    from pneumoscan.models.engine import EngineConfig

    try:
        bundle = load_bundle(settings.model_path, verify=True, runtime=EngineConfig.from_settings(settings))
        with _native_stderr_to_null():  # TensorFlow's oneDNN notice, which no log level turns off (TF 2.21)
            bundle.load()
        gate = bundle.domain_gate
    except (BundleError, OSError) as exc:
        return Check("model", False, str(exc))
    digest = (bundle.card.sha256 or "")[:12]
    domain = (f"domain gate threshold {gate.threshold:.1f}, ages {', '.join(gate.age_bands)}" if gate is not None
              else "no domain gate")
    return Check("model", True, f"{bundle.version} from {bundle.path}, sha256 {digest}… matches its card, on "
                                f"{bundle.engine.name} {bundle.engine.precision}; {domain}")


def check_salt(settings: Settings) -> Check:
    """The PatientID salt is set (or this install's file holds one) and long enough."""
    kept = settings.data_dir / "patient_salt"
    from_file = kept.is_file() and kept.read_text().strip().encode() == settings.salt
    source = str(kept) if from_file else "PNEUMOSCAN_PATIENT_SALT"
    length = len(settings.salt)
    if length < MIN_SALT_LENGTH:
        return Check("salt", False, f"from {source}: {length} characters; use at least {MIN_SALT_LENGTH}")
    return Check("salt", True, f"from {source}, {length} characters")


def check_folder(name: str, folder: Path, *, writable: bool, made_on_first_use: bool = False) -> Check:
    """A folder exists, is readable (and writable where files are written into it), and has free disk.

    ``made_on_first_use``: a folder pneumoscan creates itself may be missing, if it can be made.
    """
    if made_on_first_use and not folder.exists():
        parent = next(p for p in folder.absolute().parents if p.exists())
        makeable = os.access(parent, os.W_OK | os.X_OK)
        return Check(name, makeable, f"{folder} does not exist yet; made on first use" if makeable
                     else f"{folder} does not exist and cannot be made in {parent}")
    if not folder.is_dir():
        return Check(name, False, f"{folder} does not exist" if not folder.exists() else f"{folder} is not a folder")
    needs = os.R_OK | os.X_OK | (os.W_OK if writable else 0)
    if not os.access(folder, needs):
        return Check(name, False, f"{folder} is not {'writable' if writable else 'readable'} by this user")
    free = shutil.disk_usage(folder).free
    gib = f"{free / (1 << 30):.1f} GiB free"
    if writable and free < MIN_FREE_BYTES:
        return Check(name, False, f"{folder}: only {gib}")
    return Check(name, True, f"{folder}, {'writable' if writable else 'readable'}, {gib}")


def check_dicom_destination(settings: Settings) -> Check | None:
    """The results destination answers a C-ECHO; None when none is set."""
    if settings.destination is None:
        return None
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from pneumoscan.dicomnet.netlog import quiet_requests

    called, host, port = settings.destination
    peer = f"{called}@{host}:{port}"
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(Verification)
    quiet_requests()  # pynetdicom's ERROR lines would say again what the one line below says
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        return Check("DICOM destination", False, f"{peer} refused or did not answer the association")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code != 0:
        return Check("DICOM destination", False, f"{peer} answered C-ECHO with "
                     + ("nothing" if code is None else f"status 0x{code:04X}"))
    return Check("DICOM destination", True, f"{peer} answers C-ECHO")


def check_dicomweb(settings: Settings) -> Check | None:
    """The STOW-RS destination answers HTTP at all (any reply below 500); None when none is set."""
    import urllib.error
    import urllib.request

    url = getattr(settings, "results_dicomweb_url", None)
    if not url:
        return None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=TIMEOUT) as reply:
            code = reply.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return Check("DICOMweb destination", False, f"{url}: {getattr(exc, 'reason', None) or exc}")
    return Check("DICOMweb destination", code < 500, f"{url} answers HTTP {code}")


@contextmanager
def _native_stderr_to_null() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null inside the block: what C++ libraries write there, not Python's errors."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def run_checks(settings: Settings, inbox: Path | None = None) -> Iterator[Check]:
    """Every check that applies to these settings, in order; the slow ones (the model) last."""
    spool = settings.dicom_spool or (inbox / "received" if inbox is not None and settings.dicom_port
                                     else settings.data_dir / "received")
    checks: list[Callable[[], Check | None]] = [
        lambda: check_database(settings),
        lambda: check_broker(settings),
        lambda: check_salt(settings),
        lambda: check_folder("data folder", settings.data_dir, writable=True, made_on_first_use=True),
        lambda: None if inbox is None else check_folder("inbox", inbox, writable=False),
        lambda: check_folder("DICOM spool", spool, writable=True, made_on_first_use=True)
        if settings.dicom_port or settings.dicom_spool or spool.exists() else None,
        lambda: check_dicom_destination(settings),
        lambda: check_dicomweb(settings),
        lambda: check_model(settings),
    ]
    for check in checks:
        found = check()
        if found is not None:
            yield found
