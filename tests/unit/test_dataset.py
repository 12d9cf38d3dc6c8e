"""Training data: patient ids from Kermany file names, and patient-disjoint validation splits."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import helpers
import numpy as np
import pytest
from support import dicoms, xrays

from pneumoscan.models.dataset import DatasetError, Example, list_split, load_images, patient_id, patient_split


@pytest.mark.parametrize(
    ("filename", "patient"),
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1_virus_6.jpeg", "person1"),
        ("person1946_bacteria_4874.jpeg", "person1946"),
        ("Person12_Bacteria_3.JPEG", "person12"),
        ("IM-0115-0001.jpeg", "im-0115"),
        ("IM-0115-0002.jpeg", "im-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "normal2-im-1427"),
        ("scan.png", "scan"),  # fallback: the stem
    ],
)
def test_patient_id(filename: str, patient: str) -> None:
    assert patient_id(filename) == patient


def test_patient_ids_of_the_two_collections_do_not_collide() -> None:
    assert patient_id("IM-0001-0001.jpeg") != patient_id("NORMAL2-IM-0001-0001.jpeg")
    assert patient_id("person1_bacteria_1.jpeg") != patient_id("person10_bacteria_1.jpeg")


def _synthetic(seed: int = 7) -> list[Example]:
    """About 300 examples over 120 patients with 1-5 images each, like the real folder names."""
    rng = random.Random(seed)
    examples: list[Example] = []
    for n in range(80):
        for k in range(rng.randint(1, 5)):
            kind = rng.choice(["bacteria", "virus"])
            examples.append(Example(Path(f"train/PNEUMONIA/person{n}_{kind}_{k}.jpeg"), 1))
    for n in range(40):
        for k in range(rng.randint(1, 4)):
            examples.append(Example(Path(f"train/NORMAL/IM-{n:04d}-{k + 1:04d}.jpeg"), 0))
    # One patient id filed under both labels.
    examples.append(Example(Path("train/NORMAL/person3_bacteria_99.jpeg"), 0))
    return examples


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
def test_patient_split_is_disjoint_and_complete(seed: int, fraction: float) -> None:
    examples = _synthetic()
    train, val = patient_split(examples, fraction, seed)
    assert {e.patient for e in train}.isdisjoint({e.patient for e in val})
    assert sorted(map(str, [e.path for e in train + val])) == sorted(str(e.path) for e in examples)
    assert len(train) + len(val) == len(examples)
    # Each class gets roughly its share; one patient holds at most 5 images.
    for label in (0, 1):
        total = sum(e.label == label for e in examples)
        in_val = sum(e.label == label for e in val)
        assert fraction * total - 1 <= in_val <= fraction * total + 5 + 1, (label, in_val, total)
    assert {e.label for e in val} == {0, 1}


def test_patient_split_is_reproducible() -> None:
    examples = _synthetic()
    first = patient_split(examples, 0.2, 3)
    again = patient_split(list(examples), 0.2, 3)
    other = patient_split(examples, 0.2, 4)
    assert first == again
    assert {e.patient for e in first[1]} != {e.patient for e in other[1]}


def test_list_split_and_load_images_on_real_files(tmp_path: Path) -> None:
    for source in xrays.ALL_IMAGES:
        dest = tmp_path / "train" / source.parent.name / source.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    (tmp_path / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    examples = list_split(tmp_path, "train")
    assert Counter(e.label for e in examples) == {0: len(xrays.NORMAL_IMAGES), 1: len(xrays.PNEUMONIA_IMAGES)}
    assert all(e.path.name != ".DS_Store" for e in examples)
    images = load_images(examples, 32, helpers.POLICY, workers=2)
    assert images.shape == (len(examples), 32, 32) and images.dtype == np.uint8
    assert images.std() > 10
    with pytest.raises(DatasetError, match="NORMAL and PNEUMONIA"):
        list_split(tmp_path, "test")


def test_training_data_is_decoded_under_the_configured_policy(tmp_path: Path) -> None:
    from pneumoscan.models.dataset import DatasetError, Example

    ct = dicoms.write_dicom(xrays.NORMAL_IMAGES[0], tmp_path / "IM-0001-0001.dcm", modality="CT")
    with pytest.raises(DatasetError, match=r"IM-0001-0001\.dcm cannot be used: modality CT"):
        load_images([Example(ct, 0)], 32, helpers.POLICY)
    widened = helpers.policy(modalities=frozenset({"CR", "DX", "DR", "CT"}))  # as PNEUMOSCAN_ALLOWED_MODALITIES
    assert load_images([Example(ct, 0)], 32, widened).shape == (1, 32, 32)
