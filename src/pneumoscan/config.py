"""Configuration: every setting, read from PNEUMOSCAN_* environment variables (the only reader of os.environ)."""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SHIPPED_MODEL_DIR = Path(__file__).parent / "models" / "default"


def _data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pneumoscan"


class Settings(BaseSettings):
    """All of pneumoscan's settings. Each field is read from PNEUMOSCAN_<FIELD> when set."""

    model_config = SettingsConfigDict(env_prefix="PNEUMOSCAN_", frozen=True, extra="ignore")

    data_dir: Path = Field(default_factory=_data_home, description="Where the default SQLite file and salt live.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means a SQLite file in data_dir.")
    model: Path | None = Field(default=None, description="Model bundle directory; unset means the shipped model.")
    broker_url: str | None = Field(default=None, description="Celery broker (Redis) URL; unset means embedded mode.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Images per inference batch and per task.")
    max_batch_wait: float = Field(default=2.0, ge=0, description="Seconds a partial batch waits for more files.")
    quiet_period: float = Field(default=2.0, ge=0, description="Seconds a file's size and mtime must be unchanged.")
    decode_workers: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1, description="Decoding threads.")
    patient_salt: str | None = Field(default=None, description="Salt for PatientID hashes; unset: random per install.")
    max_pixels: int = Field(default=100_000_000, ge=1, description="Refuse images with more pixels than this.")
    allowed_modalities: str = Field(default="CR,DX,DR", description="DICOM modalities accepted (comma-separated).")
    allowed_body_parts: str = Field(default="CHEST", description="DICOM BodyPartExamined accepted; absent is accepted.")
    visibility_timeout: float = Field(default=3600.0, gt=0, description="Seconds Redis waits for a task's ack "
                                      "before redelivering it; keep it longer than the longest batch.")
    requeue_after: float = Field(default=60.0, gt=0, description="Seconds a file handed to the broker may stay "
                                 "unsettled (not started, or started and not finished) before it is enqueued again: "
                                 "the bound on what a lost message or a dead worker delays")
    max_tasks_per_child: int = Field(default=200, ge=1, description="Worker processes are replaced after this "
                                     "many tasks, which bounds memory growth.")
    nightly_at: str = Field(default="02:00", pattern=r"^([01]?\d|2[0-3]):[0-5]\d$",
                            description="Local time (HH:MM) of the nightly reclassification.")

    @field_validator("broker_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

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
    def sqlalchemy_url(self) -> str:
        """The database URL to connect to, with the SQLite default filled in."""
        return self.database_url or f"sqlite:///{self.data_dir / 'pneumoscan.db'}"

    @property
    def model_path(self) -> Path:
        """The model bundle directory in use."""
        return self.model if self.model is not None else SHIPPED_MODEL_DIR

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: watch and classify in one process."""
        return self.broker_url is None

    @cached_property
    def salt(self) -> bytes:
        """The PatientID salt: from settings, else a random one kept (mode 0600) in data_dir."""
        if self.patient_salt:
            return self.patient_salt.encode()
        path = self.data_dir / "patient_salt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return path.read_text().strip().encode()


def _upper_set(text: str) -> frozenset[str]:
    return frozenset(part.strip().upper() for part in text.split(",") if part.strip())
