"""The shipped default model: it loads, matches its card, and reads real test-split X-rays correctly."""

from __future__ import annotations

from pathlib import Path

from pneumoscan.config import SHIPPED_MODEL_DIR, Settings
from pneumoscan.db import open_database
from pneumoscan.models.bundle import MODEL_FILE, file_sha256, load_bundle
from pneumoscan.pipeline import classify_paths

TEST_IMAGES = Path(__file__).parents[1] / "fixtures" / "test_images"


def test_shipped_bundle_is_the_default_and_matches_its_card() -> None:
    assert Settings().model_path == SHIPPED_MODEL_DIR
    bundle = load_bundle(SHIPPED_MODEL_DIR, verify=True)
    assert bundle.card.sha256 == file_sha256(SHIPPED_MODEL_DIR / MODEL_FILE)
    assert (SHIPPED_MODEL_DIR / MODEL_FILE).stat().st_size <= 20 * 1024 * 1024
    assert 0.0 < bundle.threshold < 1.0
    assert bundle.card.test_metrics is not None
    assert bundle.card.test_metrics["n"] == 624  # measured on the full official test split


def test_shipped_model_reads_real_test_images_through_the_pipeline(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, patient_salt="s")
    bundle = load_bundle(settings.model_path)
    paths = sorted(TEST_IMAGES.rglob("*.jpeg"))
    assert len(paths) == 20
    results = classify_paths(paths, bundle=bundle, sessions=open_database(settings.sqlalchemy_url),
                             settings=settings)
    truth = {str(p): p.parent.name for p in paths}
    assert all(r.status == "done" and r.model_version == bundle.version for r in results)
    shown = [(Path(r.path).name, r.label, round(r.probability or 0, 3)) for r in results]
    # Every pneumonia found (test sensitivity 0.995). Issue 12's target is 18 of 20 overall: pneumonet-v11, v10 and
    # v9 get 18 (v8 got 17, v7 16, v6 16, v5 17, v4 18, v3 15, v2 16, v1 14); two NORMAL2-* images of the test
    # collection score as pneumonia. The floor is what the shipped model does, so that a further regression fails here.
    assert all(r.label == "PNEUMONIA" for r in results if truth[r.path] == "PNEUMONIA"), shown
    assert sum(r.label == truth[r.path] for r in results) >= 18, shown
