"""Configuration: every setting, read from PNEUMOSCAN_* environment variables (the only reader of os.environ)."""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

SHIPPED_MODEL_DIR = Path(__file__).parent / "models" / "default"
# argon2 parameters of new password hashes, by argon2-cffi profile (db.users maps each to its parameters).
PasswordHashing = Literal["rfc9106-low-memory", "rfc9106-high-memory", "cheapest"]


@dataclass(frozen=True)
class DecodePolicy:
    """What decoding accepts and how it pseudonymises, built once from Settings (``Settings.decode_policy``).

    The pipeline, training, evaluation and `explain` all decode under it, so an allow-list set in the
    environment means the same everywhere.
    """

    max_pixels: int
    modalities: frozenset[str]
    body_parts: frozenset[str]
    salt: bytes
    views: frozenset[str] = frozenset({"PA", "AP"})  # DICOM ViewPosition values the model assesses
    # Compressed DICOM (JPEG 2000, HTJ2K, JPEG baseline) decoded at the resolution the model needs, where
    # the codec can; False always decodes at full size first.
    reduced: bool = True
    # AccessionNumber as it is (True), or only a salted short reference to it (False).
    store_accession: bool = False


def _data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pneumoscan"


class Settings(BaseSettings):
    """All of pneumoscan's settings. Each field is read from PNEUMOSCAN_<FIELD> when set."""

    model_config = SettingsConfigDict(env_prefix="PNEUMOSCAN_", frozen=True, extra="ignore")

    data_dir: Path = Field(default_factory=_data_home, description="Where the default SQLite file and salt live.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means a SQLite file in data_dir.")
    model: Path | None = Field(default=None, description="Model bundle directory; unset means the shipped model.")
    engine: Literal["auto", "tensorflow", "openvino"] = Field(
        default="auto", description="Inference engine: auto is TensorFlow on a GPU and OpenVINO on a CPU when it is "
        "installed (else TensorFlow). Heatmaps (Grad-CAM) always use TensorFlow.")
    precision: Literal["fp32", "bf16", "int8"] = Field(
        default="fp32", description="Inference precision. fp32 agrees with TensorFlow within 1e-4; bf16 (OpenVINO, a "
        "CPU with BF16) and int8 (OpenVINO, quantized with NNCF on DATA's train split: the `int8` extra) only after "
        "`pneumoscan model check DATA --precision bf16|int8` passed on this machine.")
    out_of_domain: Literal["flag", "skip"] = Field(
        default="flag", description="An image outside the population the model was validated on (an age band outside "
        "the card's, or a domain score above its threshold): flag scores and labels it, marked out; skip stores it "
        "as not assessed, with the reason.")
    model_cache_dir: Path | None = Field(default=None, description="Where converted models (and precision checks) "
                                         "are kept per machine; unset: DATA_DIR/model-cache.")
    engine_threads: int = Field(default=0, ge=0, description="Inference threads of the OpenVINO engine; 0: its "
                                "default (one per core).")
    broker_url: str | None = Field(default=None, description="Celery broker (Redis) URL; unset means embedded mode.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Images per inference batch and per task.")
    max_batch_wait: float = Field(default=2.0, ge=0, description="Seconds a partial batch waits for more files.")
    quiet_period: float = Field(default=2.0, ge=0, description="Seconds a file's size and mtime must be unchanged.")
    decode_workers: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1, description="Decoding threads.")
    patient_salt: str | None = Field(default=None, validate_default=True, repr=False,
                                     description="Salt for PatientID hashes; unset: random per install (required "
                                     "with a broker, as every machine must hash alike).")
    max_pixels: int = Field(default=100_000_000, ge=1, description="Refuse images with more pixels than this.")
    allowed_modalities: str = Field(default="CR,DX,DR", description="DICOM modalities accepted (comma-separated).")
    allowed_body_parts: str = Field(default="CHEST", description="DICOM BodyPartExamined accepted; absent is accepted.")
    assessed_views: str = Field(default="PA,AP", description="DICOM ViewPosition values the model assesses (frontal "
                                "views); others (LL, LATERAL...) are stored as not assessed. Absent is assessed.")
    reduced_decode: bool = Field(default=True, description="Decode DICOM at the resolution the model needs, not "
                                 "at full size: JPEG 2000, HTJ2K and JPEG baseline at a reduced level, other large "
                                 "images with a linear window as block means (false: always full size).")
    visibility_timeout: float = Field(default=3600.0, gt=0, description="Seconds Redis waits for a task's ack "
                                      "before redelivering it; keep it longer than the longest batch.")
    requeue_after: float = Field(default=60.0, gt=0, description="Seconds a file handed to the broker may stay "
                                 "unsettled (not started, or started and not finished) before it is enqueued again: "
                                 "the bound on what a lost message or a dead worker delays")
    max_tasks_per_child: int = Field(default=200, ge=1, description="Worker processes are replaced after this "
                                     "many tasks, which bounds memory growth.")
    secret_key: str | None = Field(default=None, repr=False, description="Signs the web app's session cookies; "
                                   "unset: random per install, kept in data_dir.")
    blinded_reading: bool = Field(default=False, description="Hide the model's call, probability and heatmap from "
                                  "a reader until they have saved their own reading of the case.")
    store_accession: bool = Field(default=False, description="Store a DICOM file's AccessionNumber (the link to the "
                                  "RIS; an identifier). Off: only a salted short reference to it, as for PatientID.")
    urgent_probability: float = Field(default=0.9, ge=0, le=1, description="A study or image whose probability is at "
                                      "or above this is urgent: listed first and counted on the dashboard and "
                                      "in /metrics.")
    audit_retention_days: int = Field(default=3650, ge=0, description="Days the audit trail keeps an event; older "
                                      "ones are pruned when the web app starts and by `pneumoscan audit --prune`; "
                                      "0 keeps every event.")
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30, description="Web sessions expire this many "
                                 "hours after sign-in.")
    password_hashing: PasswordHashing = Field(
        default="rfc9106-low-memory", description="argon2 parameters of new password hashes, by argon2-cffi "
        "profile: RFC 9106's low-memory or high-memory choice, or cheapest (for tests only: no protection).")
    secure_cookies: bool = Field(default=False, description="Send the session cookie over HTTPS only; set it "
                                 "when the app is served behind a TLS reverse proxy.")
    dicom_port: int | None = Field(default=None, ge=1, le=65535, description="Port of the DICOM receiver (C-STORE "
                                   "and C-ECHO SCP) that watch and scheduler run beside the watcher; unset: none.")
    dicom_ae_title: str = Field(default="PNEUMOSCAN", min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$",
                                description="The receiver's own AE title.")
    dicom_allowed_aes: str = Field(default="", description="Calling AE titles allowed to send (comma-separated); "
                                   "empty allows any.")
    dicom_spool: Path | None = Field(default=None, description="Folder `pneumoscan receive` writes instances to; "
                                     "unset: data_dir/received. (watch and scheduler use FOLDER/received.)")
    study_stable_seconds: float = Field(default=60.0, gt=0, description="A study is complete when no instance of "
                                        "it has arrived for this long.")
    results_destination: str | None = Field(default=None, pattern=r"^[ -~]{1,16}@[^:@\s]+:\d{1,5}$",
                                            description="AE@host:port that completed studies' results are sent to "
                                            "as DICOM structured reports; unset: none are sent.")
    results_heatmap: bool = Field(default=False, description="Send a Secondary Capture of the most suspicious "
                                  "frontal image with the model's Grad-CAM heatmap beside each study's report.")
    results_max_attempts: int = Field(default=8, ge=1, description="Attempts to send a study's result before it is "
                                      "marked failed with the peer's reason (retried with backoff in between).")
    results_retry_seconds: float = Field(default=10.0, gt=0, description="Wait before the first retry of a refused "
                                         "result; each later retry waits twice as long, at most an hour.")
    results_probability_tolerance: float = Field(default=0.02, ge=0, le=1, description="A study's result is sent "
                                                 "again only if its label, assessed instances or model version "
                                                 "change, or its probability moves by more than this.")
    results_dicomweb_url: str | None = Field(default=None, pattern=r"^(https?://[^\s]+)?$",
                                             description="DICOMweb base URL (its /studies is STOW-RS) that completed "
                                             "studies' results are sent to instead of by C-STORE; unset: none.")
    results_dicomweb_user: str | None = Field(default=None, description="User for HTTP Basic authentication to "
                                              "PNEUMOSCAN_RESULTS_DICOMWEB_URL; unset: none.")
    results_dicomweb_password: str | None = Field(default=None, repr=False, description="Its password.")
    dicomweb_max_bytes: int = Field(default=2 * 1024**3, ge=1024, description="Largest STOW-RS request body "
                                    "POST /dicomweb/studies takes (a whole study, streamed to a temporary file).")
    nightly_at: str = Field(default="02:00", pattern=r"^([01]?\d|2[0-3]):[0-5]\d$",
                            description="Local time (HH:MM) of the nightly reclassification.")

    spool_retention_days: float | None = Field(default=None, gt=0, description="Received DICOM files (the "
                                               "receiver's spool) of studies complete and delivered this many days "
                                               "ago are removed by the nightly job; unset: kept. Never the inbox.")
    engine_streams: int = Field(default=0, ge=0, description="Inference streams of the OpenVINO engine: a batch is "
                                "split over them, run at once; 0: OpenVINO's choice (one per core), 1: one request "
                                "with every thread (its latency mode).")

    @field_validator("broker_url", "results_destination", "dicom_port", "spool_retention_days", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_results_destination(self) -> Settings:
        if self.results_destination and self.results_dicomweb_url:
            raise ValueError("set PNEUMOSCAN_RESULTS_DESTINATION (C-STORE) or PNEUMOSCAN_RESULTS_DICOMWEB_URL "
                             "(STOW-RS), not both")
        return self

    @field_validator("patient_salt")
    @classmethod
    def _resolve_salt(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Settle the salt once, at start-up, so that no decode thread ever creates or reads the salt file.

        ``data_dir`` and ``broker_url`` are declared earlier, so they are validated by now (and missing
        from ``info.data`` only when invalid themselves, which is reported on its own).
        """
        if value:
            return value
        if info.data.get("broker_url") is not None:
            # A random salt per machine would give one patient a different reference on each worker.
            raise PydanticCustomError(
                "salt_required", "required when PNEUMOSCAN_BROKER_URL is set: workers on several machines "
                "must share one salt, so set the same secret on every machine")
        data_dir = info.data.get("data_dir")
        if data_dir is None:
            return None
        try:
            salt = _install_secret(Path(data_dir), _SALT_FILE)
        except OSError as exc:
            raise PydanticCustomError(
                "salt_unavailable", "cannot keep a generated salt in {folder} ({problem}); set "
                "PNEUMOSCAN_PATIENT_SALT or a writable PNEUMOSCAN_DATA_DIR",
                {"folder": str(data_dir), "problem": exc.strerror or str(exc)}) from None
        if not salt:  # left by a version that wrote the file in place; never hash with an empty salt
            raise PydanticCustomError(
                "salt_empty", "{path} is empty: remove it to have a new salt made, or set PNEUMOSCAN_PATIENT_SALT",
                {"path": str(Path(data_dir) / _SALT_FILE)})
        return salt

    def web_secret(self) -> str:
        """The key that signs session cookies: from settings, else this install's random one (made on first use)."""
        if self.secret_key:
            return self.secret_key
        secret = _install_secret(self.data_dir, _WEB_SECRET_FILE)
        if not secret:
            raise ValueError(f"{self.data_dir / _WEB_SECRET_FILE} is empty: remove it, or set PNEUMOSCAN_SECRET_KEY")
        return secret

    @property
    def allowed_aes(self) -> frozenset[str]:
        """Calling AE titles allowed to send to the receiver; empty allows any."""
        return names(self.dicom_allowed_aes)

    @property
    def destination(self) -> tuple[str, str, int] | None:
        """(AE title, host, port) of ``results_destination``, or None."""
        if self.results_destination is None:
            return None
        ae, _, address = self.results_destination.partition("@")
        host, _, port = address.rpartition(":")
        return ae, host, int(port)

    @property
    def nightly_hour_minute(self) -> tuple[int, int]:
        """``nightly_at`` as (hour, minute)."""
        hour, minute = self.nightly_at.split(":")
        return int(hour), int(minute)

    @property
    def modality_set(self) -> frozenset[str]:
        return _upper_set(self.allowed_modalities)

    @property
    def body_part_set(self) -> frozenset[str]:
        return _upper_set(self.allowed_body_parts)

    @property
    def decode_policy(self) -> DecodePolicy:
        """The decoding rules these settings make (size limit, DICOM allow-lists, PatientID salt)."""
        return DecodePolicy(self.max_pixels, self.modality_set, self.body_part_set, self.salt,
                            _upper_set(self.assessed_views), self.reduced_decode, self.store_accession)

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL to connect to, with the SQLite default filled in."""
        return self.database_url or f"sqlite:///{self.data_dir / 'pneumoscan.db'}"

    @property
    def model_path(self) -> Path:
        """The model bundle directory in use."""
        return self.model if self.model is not None else SHIPPED_MODEL_DIR

    @property
    def model_cache(self) -> Path:
        """The per-machine cache of converted models and precision checks."""
        return self.model_cache_dir if self.model_cache_dir is not None else self.data_dir / "model-cache"

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: watch and classify in one process."""
        return self.broker_url is None

    @property
    def salt(self) -> bytes:
        """The PatientID salt: from settings, else this install's random one, kept (mode 0600) in data_dir.

        Resolved when the settings were built (see ``_resolve_salt``), so reading it does no I/O.
        """
        if not self.patient_salt:  # only settings built without validation (model_construct) lack it
            raise RuntimeError("the patient salt was not resolved: build Settings with validation")
        return self.patient_salt.encode()


_SALT_FILE = "patient_salt"
_WEB_SECRET_FILE = "web_secret"


def _install_secret(data_dir: Path, name: str) -> str:
    """This install's secret (stripped, maybe empty) from ``data_dir/name``, created first if need be.

    The new secret is written in full to a temporary file and only then linked to its name. A link
    never replaces an existing file, so when processes race exactly one of them wins, and the others,
    and every later reader, find the winner's complete file: nobody sees a half-written secret.
    """
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=data_dir)  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process won the race; its salt is the install's
            else:
                _fsync_folder(data_dir)  # a salt lost in a crash would orphan every reference made with it
        finally:
            os.unlink(temporary)
    return path.read_text().strip()


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync there; NTFS journals the link itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def names(text: str) -> frozenset[str]:
    """The comma-separated names in ``text``, stripped, empty ones left out (AE titles keep their case)."""
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _upper_set(text: str) -> frozenset[str]:
    return frozenset(name.upper() for name in names(text))
