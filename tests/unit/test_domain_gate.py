"""The domain gate: ages kept only as bands, the shrunk covariance, the threshold rule, and the shipped gate on
images that are not pediatric chest films (an adult chest radiograph, photographs, synthetic images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumoscan.config import SHIPPED_MODEL_DIR, Settings
from pneumoscan.domain import age_band, age_in_years
from pneumoscan.imaging import decode
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.card import BundleError
from pneumoscan.models.domain import DOMAIN_FILE, fit_gate, ledoit_wolf, load_gate, threshold_for

TEST_IMAGES = Path(__file__).parents[1] / "fixtures" / "test_images"


@pytest.mark.parametrize(("patient_age", "birth", "study", "band"), [
    ("003Y", None, None, "1-5y"), ("005Y", None, None, "1-5y"), ("006Y", None, None, "6-17y"),
    ("018M", None, None, "1-5y"), ("011M", None, None, "under 1y"), ("003W", None, None, "under 1y"),
    ("010D", None, None, "under 1y"), ("045Y", None, None, "18-64y"), ("070Y", None, None, "65y+"),
    ("017Y", None, None, "6-17y"), ("018Y", None, None, "18-64y"),
    (None, "20200310", "20230309", "1-5y"),  # a day short of three: two years completed
    (None, "20200310", "20260310", "6-17y"), (None, "19800101", "20260101", "18-64y"),
    ("", "20200310", "20230310", "1-5y"),  # an empty PatientAge falls back to the dates
    ("garbage", None, None, None), (None, "2020", "20230309", None), (None, "20200310", None, None),
    (None, "20300101", "20200101", None),  # born after the study: no age
    (None, None, None, None),
])
def test_an_age_is_worked_out_from_the_header_and_kept_only_as_its_band(
        patient_age: str | None, birth: str | None, study: str | None, band: str | None) -> None:
    assert age_band(age_in_years(patient_age, birth, study)) == band


def test_ledoit_wolf_agrees_with_scikit_learn() -> None:
    from sklearn.covariance import ledoit_wolf as reference

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40)) + 3.0  # correlated, off-centre
    mean, covariance, shrinkage = ledoit_wolf(x)
    expected, expected_shrinkage = reference(x)
    np.testing.assert_allclose(mean, x.mean(axis=0))
    np.testing.assert_allclose(covariance, expected, rtol=1e-10, atol=1e-10)
    assert shrinkage == pytest.approx(expected_shrinkage)
    assert 0 < shrinkage < 1


def test_the_threshold_marks_at_most_two_percent_of_validation_and_is_the_lowest_that_does() -> None:
    rng = np.random.default_rng(1)
    for n in (49, 50, 786, 1000):
        scores = rng.gamma(4.0, size=n)
        threshold = threshold_for(scores)
        assert np.mean(scores > threshold) <= 0.02
        assert np.mean(scores >= threshold) > 0.02 or np.sum(scores >= threshold) == 1  # one lower marks too many


def test_a_fitted_gate_marks_what_is_far_from_train_and_its_files_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    train, validation = rng.normal(size=(2000, 16)), rng.normal(size=(500, 16))
    gate, record = fit_gate(train, validation, ("1-5y",))
    assert record["validation_marked"] <= 0.02 and record["validation_n"] == 500
    far = rng.normal(size=(50, 16)) + 4.0
    assert (gate.scores(far) > gate.threshold).all()
    one = float(gate.scores(validation[:1])[0])
    assert gate.verdict(one, "1-5y").out == (one > gate.threshold)
    old = gate.verdict(1.0, "18-64y")
    assert old.out and "18-64y" in (old.reason or "")
    assert not gate.verdict(1.0, None).out and not gate.verdict(None, None).out

    from pneumoscan.models.domain import save_statistics

    save_statistics(tmp_path, gate)
    loaded = load_gate(tmp_path, record)
    assert loaded is not None
    np.testing.assert_allclose(loaded.scores(far), gate.scores(far), rtol=1e-5)
    assert load_gate(tmp_path / "none", None) is None  # a bundle without a gate
    (tmp_path / DOMAIN_FILE).write_bytes(b"not an npz")
    with pytest.raises(BundleError, match="fit it again"):
        load_gate(tmp_path, record)
    with pytest.raises(BundleError, match="no 'domain' record"):
        load_gate(tmp_path, None)


def _outsiders() -> dict[str, np.ndarray]:
    """Inputs that are not pediatric chest films, decoded as the worker decodes."""
    import matplotlib
    from pydicom.data import get_testdata_file

    policy = Settings().decode_policy
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    adult = get_testdata_file("RG1_UNCI.dcm")  # an adult PA chest radiograph (CR, 1955x1841)
    assert adult is not None
    files = {"adult chest radiograph": Path(adult), "photograph (Grace Hopper)": sample / "grace_hopper.jpg",
             "photograph (a pack)": sample / "Minduka_Present_Blue_Pack.png", "logo": sample / "logo2.png"}
    images = {name: decode(path.read_bytes(), (224, 224), policy).pixels for name, path in files.items()}
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:224, 0:224] / 223.0
    images.update({"noise": rng.random((224, 224)).astype(np.float32), "flat grey": np.full((224, 224), 0.5),
                   "gradient": xx.astype(np.float32), "checkerboard": ((yy * 8).astype(int) + (xx * 8).astype(int))
                   .__mod__(2).astype(np.float32)})
    return images


@pytest.mark.slow
def test_the_shipped_gate_passes_pediatric_films_and_marks_what_is_not_one() -> None:
    bundle = load_bundle(SHIPPED_MODEL_DIR)
    gate = bundle.domain_gate
    assert gate is not None and gate.age_bands == ("1-5y",)
    assert bundle.card.domain is not None and bundle.card.domain["validation_marked"] <= 0.02
    policy = Settings().decode_policy
    films = np.stack([decode(p.read_bytes(), (224, 224), policy).pixels for p in sorted(TEST_IMAGES.rglob("*.jpeg"))])
    _, film_scores = bundle.infer(films)
    assert film_scores is not None
    assert np.mean(film_scores > gate.threshold) <= 0.1, film_scores  # real test-split films: in
    outsiders = _outsiders()
    _, scores = bundle.infer(np.stack(list(outsiders.values())).astype(np.float32))
    assert scores is not None
    marked = dict(zip(outsiders, (scores > gate.threshold).tolist(), strict=True))
    assert all(marked.values()), dict(zip(outsiders, scores.round(1).tolist(), strict=True))
    assert scores.min() > np.median(film_scores)


@pytest.mark.slow
def test_doctor_names_the_gate_and_fails_on_a_damaged_one(tmp_path: Path) -> None:
    import shutil

    from pneumoscan.services.doctor import check_model

    model = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL_DIR, model)
    settings = Settings(data_dir=tmp_path / "data", model=model, engine="tensorflow")
    healthy = check_model(settings)
    threshold = load_bundle(model).card.domain["threshold"]  # type: ignore[index]
    assert healthy.ok and f"domain gate threshold {threshold:.1f}, ages 1-5y" in healthy.detail, healthy
    (model / DOMAIN_FILE).write_bytes(b"\x00" * 64)
    damaged = check_model(settings)
    assert not damaged.ok and "fit it again with `pneumoscan model fit-domain DATA`" in damaged.detail, damaged


@pytest.mark.slow
def test_fit_domain_writes_the_gate_into_a_bundle_and_domain_check_reads_a_split(tmp_path: Path) -> None:
    import json
    import shutil

    from helpers import invoke, pneumoscan_env

    data = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):  # the 20 real fixture films as a train split; no test split
        shutil.copytree(TEST_IMAGES / label, data / "train" / label)
    model = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL_DIR, model, ignore=shutil.ignore_patterns("domain.npz"))
    card = json.loads((model / "card.json").read_text())
    del card["domain"]
    (model / "card.json").write_text(json.dumps(card))
    env = pneumoscan_env(tmp_path / "home", model, PNEUMOSCAN_ENGINE="tensorflow")
    assert load_bundle(model).domain_gate is None
    fitted = invoke(["model", "fit-domain", str(data)], env)
    assert fitted.returncode == 0, fitted.stderr
    bundle = load_bundle(model, verify=True)  # the model file untouched
    gate, record = bundle.domain_gate, bundle.card.domain
    assert gate is not None and record is not None and (model / DOMAIN_FILE).is_file()
    n_val = record["validation_n"]
    assert 0 < n_val < 20 and record["fitted_on"] == f"train ({20 - n_val} images; validation held out)"
    assert record["validation_marked"] <= 0.02 and gate.age_bands == ("1-5y",)
    assert f"threshold {record['threshold']:.2f}" in fitted.stdout
    checked = invoke(["model", "domain-check", str(data), "--update-card"], env)
    assert checked.returncode == 0, checked.stderr
    assert f"validation: 0 of {n_val} images marked out" in checked.stdout
    assert load_bundle(model).card.domain["validation_n"] == n_val  # type: ignore[index]
    missing = invoke(["model", "domain-check", str(data), "--split", "test"], env)
    assert missing.returncode == 1 and "test must contain the folders NORMAL and PNEUMONIA" in missing.stderr
    assert "Traceback" not in missing.stderr
