"""Training data: the DATA/{train,test,val}/{NORMAL,PNEUMONIA} layout, patient ids and patient-wise splits."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.config import DecodePolicy
from pneumoscan.domain import LABELS
from pneumoscan.imaging import ImagingError, decode

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # person1_bacteria_1.jpeg, person1_virus_6.jpeg
    re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+", re.IGNORECASE),  # IM-0115-0001, NORMAL2-IM-1427-0001
)


class DatasetError(Exception):
    """A data folder that does not have the expected layout."""


@dataclass(frozen=True)
class Example:
    """One labelled file: label 1 is PNEUMONIA, 0 is NORMAL."""

    path: Path
    label: int

    @property
    def patient(self) -> str:
        return patient_id(self.path.name)


def patient_id(filename: str) -> str:
    """The patient a Kermany file name belongs to, prefixed by nothing else; falls back to the stem."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(filename)
        if match:
            return match.group(1).lower()
    return Path(filename).stem.lower()


def list_split(data_dir: Path, split: str) -> list[Example]:
    """All image files of ``data_dir/split/{NORMAL,PNEUMONIA}``, sorted for reproducibility."""
    root = data_dir / split
    missing = [name for name in LABELS if not (root / name).is_dir()]
    if missing:
        raise DatasetError(f"{root} must contain the folders NORMAL and PNEUMONIA (missing: {', '.join(missing)})")
    examples = [
        Example(path, label)
        for label, name in enumerate(LABELS)
        for path in sorted((root / name).iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]
    if not examples:
        raise DatasetError(f"{root} has no image files")
    return examples


def patient_split(
    examples: list[Example], val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split into (train, validation) so that no patient is on both sides, per class.

    Patients are shuffled with ``seed`` and taken into validation until each class holds about
    ``val_fraction`` of its images.
    """
    by_patient: dict[tuple[int, str], list[Example]] = defaultdict(list)
    for example in examples:
        by_patient[(example.label, example.patient)].append(example)
    rng = random.Random(seed)
    val_keys: set[tuple[int, str]] = set()
    for label in (0, 1):
        keys = sorted(k for k in by_patient if k[0] == label)
        rng.shuffle(keys)
        goal = val_fraction * sum(len(by_patient[k]) for k in keys)
        taken = 0
        for key in keys:
            if taken >= goal:
                break
            val_keys.add(key)
            taken += len(by_patient[key])
    # A patient id seen under both labels must stay on one side.
    val_patients = {patient for _, patient in val_keys}
    train = [e for e in examples if e.patient not in val_patients]
    val = [e for e in examples if e.patient in val_patients]
    return train, val


def train_validation(data_dir: Path, val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """The (train, validation) examples a training run uses: train split by patient, plus ``val`` if present."""
    train, val = patient_split(list_split(data_dir, "train"), val_fraction, seed)
    if (data_dir / "val").is_dir():
        val += list_split(data_dir, "val")
    return train, val


def load_images(examples: list[Example], size: int, policy: DecodePolicy, *, exact: bool = False,
                workers: int = 8) -> np.ndarray:
    """Decode examples through the pipeline's own decoder, under ``policy``, to a (n, size, size) array.

    ``exact`` gives the float32 pixels in [0, 1] that the worker feeds the model (evaluation,
    thresholds, calibration); otherwise they are rounded to uint8 (x 255) to keep training sets small.
    """

    def one(example: Example) -> np.ndarray:
        try:
            pixels = decode(example.path.read_bytes(), (size, size), policy).pixels
        except (ImagingError, OSError) as exc:  # bad training data is the user's to fix: name the file
            raise DatasetError(f"{example.path} cannot be used: {getattr(exc, 'reason', None) or exc}") from None
        return pixels.astype(np.float32) if exact else np.round(pixels * 255.0).astype(np.uint8)

    with ThreadPoolExecutor(workers) as pool:
        if examples:
            return np.stack(list(pool.map(one, examples)))
        return np.zeros((0, size, size), np.float32 if exact else np.uint8)


def labels_of(examples: list[Example]) -> np.ndarray:
    """The 0/1 labels of ``examples`` as an int array."""
    return np.array([e.label for e in examples], dtype=np.int32)
