"""Model v4 features end to end: fine-tuning from ImageNet, heatmaps, site operating points, evaluate == pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
from support import dicoms, xrays

from pneumoscan.db.reviews import add_review
from pneumoscan.db.schema import OperatingPoint, Prediction
from pneumoscan.db.writes import save_results
from pneumoscan.domain import Result
from pneumoscan.models.bundle import MODEL_FILE, ModelCard, load_bundle, write_bundle
from pneumoscan.models.pretrained import read_torch_legacy, weights_file

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _cli(exe: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def real_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "train" / label).mkdir(parents=True)
        for path in sorted((FIXTURES / "images" / label).glob("*.jpeg")) + sorted(
                (FIXTURES / "test_images" / label).glob("*.jpeg")):
            shutil.copy(path, root / "train" / label / path.name)
    return root


@pytest.mark.slow
def test_a_tiny_fine_tune_from_imagenet_trains_only_the_head_first(real_data: Path, tmp_path: Path,
                                                                   pneumoscan_exe: Path) -> None:
    out = tmp_path / "lite"
    args = ["train", str(real_data), "--out", str(out), "--architecture", "efficientnet-lite0", "--weights",
            "imagenet", "--input-size", "32", "--epochs", "1", "--head-epochs", "1", "--batch-size", "8",
            "--backbone-lr-scale", "0.1", "--freeze-bn", "--ema", "0.9", "--val-fraction", "0.3"]
    proc = _cli(pneumoscan_exe, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundle = load_bundle(out, verify=True)
    assert bundle.card.architecture == "efficientnet-lite0" and bundle.card.calibration is not None
    assert bundle.card.calibration.temperature > 0 and bundle.temperature == bundle.card.calibration.temperature
    assert "validation is tiny" in " ".join(bundle.card.warnings or ()) and "WARNING" in proc.stderr
    probabilities = bundle.predict(np.random.default_rng(0).random((3, 32, 32), dtype=np.float32))
    assert probabilities.shape == (3,) and np.all((probabilities > 0) & (probabilities < 1))
    # During the head epoch the backbone keeps its ImageNet weights; the head has moved from its start.
    stem = read_torch_legacy(weights_file("efficientnet-lite0"))["_conv_stem.weight"].transpose(2, 3, 1, 0)
    model = bundle.model
    np.testing.assert_allclose(model.get_layer("_conv_stem").get_weights()[0], stem.sum(axis=2, keepdims=True),
                               atol=1e-6)
    assert model.get_layer("_blocks.3._bn1").trainable is False

    # A finished run is a no-op that says so; --restart trains it again under a new version.
    again = _cli(pneumoscan_exe, *args)
    assert again.returncode == 0 and "already holds the finished bundle" in again.stdout
    assert load_bundle(out).version == bundle.version


@pytest.mark.slow
def test_train_equalize_puts_the_layer_in_the_bundle_and_init_must_match(real_data: Path, tmp_path: Path,
                                                                          pneumoscan_exe: Path) -> None:
    out = tmp_path / "eq"
    common = ["--architecture", "tiny", "--input-size", "32", "--epochs", "1", "--batch-size", "8",
              "--val-fraction", "0.3"]
    proc = _cli(pneumoscan_exe, "train", str(real_data), "--out", str(out), "--equalize", *common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundle = load_bundle(out, verify=True)
    assert bundle.card.training_config["equalize"] is True
    assert bundle.model.get_layer("equalize").levels == 256
    # A contrast curve that keeps the grey levels apart does not change what the model says.
    image = np.random.default_rng(3).integers(0, 128, (2, 32, 32)) / 255.0
    curved = np.rint(255 * (image * 255 / 127.0) ** 0.6) / 255.0
    np.testing.assert_allclose(bundle.predict(curved.astype(np.float32)), bundle.predict(image.astype(np.float32)),
                               atol=1e-6)

    # Fine-tuning from it without --equalize would silently drop or keep the layer: refused in one line.
    again = _cli(pneumoscan_exe, "train", str(real_data), "--out", str(tmp_path / "again"), "--init", str(out),
                 *common)
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-2000:]
    (error,) = [line for line in again.stderr.splitlines() if line.startswith("Error:")]
    assert "equalizes its input" in error and "add --equalize" in error


@pytest.mark.slow
def test_a_keras_backbone_without_internet_is_one_clear_line(real_data: Path, tmp_path: Path,
                                                             pneumoscan_exe: Path) -> None:
    env = {**helpers.pneumoscan_env(tmp_path / "d", "x"), "KERAS_HOME": str(tmp_path / "keras"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    proc = _cli(pneumoscan_exe, "train", str(real_data), "--out", str(tmp_path / "m"), "--architecture",
                "mobilenetv2", "--weights", "imagenet", "--input-size", "32", "--epochs", "1", env=env)
    assert proc.returncode == 1
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "could not download" in error and "efficientnet-lite0" in error and "KERAS_HOME" in error


def _blob_images(n: int, size: int, rng: np.random.Generator, *, blob: bool,
                 centre: tuple[int, int] | None = None) -> np.ndarray:
    """Noise with one blob: bright for PNEUMONIA, dark for NORMAL, so that image statistics alone
    (which the net's per-image standardization removes) cannot tell them apart: only the blob can."""
    yy, xx = np.mgrid[:size, :size]
    images = 0.45 + 0.1 * rng.random((n, size, size))
    for image in images:
        cy, cx = centre or rng.integers(8, size - 8, 2)
        image += (0.4 if blob else -0.4) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5 ** 2))
    return np.clip(images, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def blob_bundle(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny net trained until it detects a bright blob anywhere in the image (PNEUMONIA = blob)."""
    import keras

    from pneumoscan.models.architectures import build_model

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = np.concatenate([_blob_images(200, 48, rng, blob=False), _blob_images(200, 48, rng, blob=True)])
    y = np.r_[np.zeros(200), np.ones(200)].astype(np.float32)
    model = build_model("tiny", 48, dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=["accuracy"])
    model.fit(x[..., None], y, epochs=12, batch_size=32, verbose=0, shuffle=True)
    card = ModelCard(version="blob-1", input_size=48, threshold=0.5, architecture="tiny")
    return write_bundle(tmp_path_factory.mktemp("blob") / "b", model, card)


@pytest.mark.slow
def test_grad_cam_peaks_over_the_blob_the_model_keys_on(blob_bundle: Any) -> None:
    rng = np.random.default_rng(7)
    for centre in ((12, 34), (30, 14), (36, 36)):
        image = _blob_images(1, 48, rng, blob=True, centre=centre)
        assert blob_bundle.predict(image)[0] > 0.9
        heatmap = blob_bundle.explain(image)[0]
        assert heatmap.shape == (48, 48) and heatmap.max() == pytest.approx(1.0)
        peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        assert np.hypot(peak[0] - centre[0], peak[1] - centre[1]) <= 6, (peak, centre)


@pytest.mark.slow
def test_an_ensemble_explains_as_the_mean_of_its_members_maps(blob_bundle: Any, tmp_path: Path) -> None:
    import keras

    from pneumoscan.models.ensemble import build_ensemble

    second = load_bundle(shutil.copytree(blob_bundle.path, tmp_path / "second"))
    model = keras.models.load_model(second.path / MODEL_FILE, compile=False)
    model.get_layer("block2_sep2").set_weights([w * 0.5 for w in model.get_layer("block2_sep2").get_weights()])
    model.save(second.path / MODEL_FILE)
    ensemble = write_bundle(tmp_path / "ens", build_ensemble([blob_bundle, load_bundle(second.path)]),
                            ModelCard(version="e", input_size=48, threshold=0.5))
    image = _blob_images(2, 48, np.random.default_rng(3), blob=True)
    mean = (blob_bundle.explain(image) + load_bundle(second.path).explain(image)) / 2
    expected = mean / mean.max(axis=(1, 2), keepdims=True)  # each image's map scaled to a peak of 1
    np.testing.assert_allclose(ensemble.explain(image), expected, atol=1e-4)


@pytest.mark.slow
def test_explain_writes_an_overlay_for_an_image_id_and_for_a_file(tmp_path: Path, blob_bundle: Any,
                                                                  pneumoscan_exe: Path) -> None:
    env = helpers.pneumoscan_env(tmp_path / "data", blob_bundle.path)
    xray = FIXTURES / "test_images" / "PNEUMONIA" / sorted(p.name for p in
                                                           (FIXTURES / "test_images" / "PNEUMONIA").iterdir())[0]
    assert _cli(pneumoscan_exe, "scan", str(xray.parent), env=env).returncode == 0
    listing = json.loads(_cli(pneumoscan_exe, "results", "--format", "json", env=env).stdout)
    image_id = str(listing[0]["id"])
    for target in (image_id, str(xray)):
        out = tmp_path / f"map-{target.replace('/', '_')[-20:]}.png"
        proc = _cli(pneumoscan_exe, "explain", target, "--out", str(out), env=env)
        assert proc.returncode == 0, proc.stderr
        from PIL import Image

        picture = np.asarray(Image.open(out))
        assert picture.shape == (48, 48, 3) and picture.std() > 5
    # With a site operating point in force, the label is the one the pipeline would give.
    from pneumoscan.db import open_database
    from pneumoscan.db.reviews import record_point

    db = open_database(f"sqlite:///{tmp_path / 'data' / 'pneumoscan.db'}")
    with db.begin() as session:
        record_point(session, blob_bundle.version, 1.0, blob_bundle.threshold, 0.95, [], {})
    db.dispose()
    sited = _cli(pneumoscan_exe, "explain", image_id, "--out", str(tmp_path / "site.png"), env=env)
    assert sited.returncode == 0 and "NORMAL at probability" in sited.stdout
    assert "(threshold 1.000, the site operating point)" in sited.stdout
    missing = _cli(pneumoscan_exe, "explain", "99999", "--out", str(tmp_path / "x.png"), env=env)
    assert missing.returncode == 1 and "no image with id 99999" in missing.stderr
    assert not (tmp_path / "x.png").exists()


# --- site operating point ------------------------------------------------------------------------------

def _stored_cases(sessions: Any, version: str, n: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """n done images of ``version`` with probabilities that rank the truth imperfectly; returns (ids, truth)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.5).astype(int)
    probability = 1 / (1 + np.exp(-(2.5 * (truth * 2 - 1) + rng.normal(0, 1.5, n) + 1.0)))
    results = [Result(f"/inbox/case{i}.png", "done", sha256=f"{i:064x}", kind="png", byte_size=10,
                      probability=float(p), label="PNEUMONIA" if p >= 0.5 else "NORMAL", threshold=0.5,
                      model_version=version) for i, p in enumerate(probability)]
    with sessions.begin() as session:
        save_results(session, results)
    with sessions() as session:
        ids = [i for (i,) in session.query(Prediction.image_id).order_by(Prediction.image_id)]
    return ids, truth


@pytest.mark.slow
def test_site_calibration_meets_its_target_is_recorded_and_can_be_undone(
        tmp_path: Path, sessions: Any, settings: Any, tiny_bundle: Any, pneumoscan_exe: Path) -> None:
    env = helpers.pneumoscan_env(settings.data_dir, tiny_bundle.path)
    ids, truth = _stored_cases(sessions, tiny_bundle.version, 160)
    with sessions.begin() as session:  # the first 59 of each class, then too few of one class
        normals = [i for i, t in zip(ids, truth, strict=True) if t == 0][:59]
        for i in normals:
            add_review(session, i, "dr-a", "NORMAL", None)
        for i in [i for i, t in zip(ids, truth, strict=True) if t == 1][:70]:
            add_review(session, i, "dr-a", "PNEUMONIA", None)
    refused = _cli(pneumoscan_exe, "calibrate", "--from-reviews", "--min-reviews", "60", env=env)
    assert refused.returncode == 1 and "59 NORMAL and 70 PNEUMONIA" in refused.stderr

    # A correction through the CLI is a new review; the latest reading counts. Reviewers are enabled users.
    from pneumoscan.db.users import add_user

    with sessions.begin() as session:
        for name in ("dr-b", "x"):
            add_user(session, name, "reviewer", "a-long-enough-password")
    wrong = next(i for i, t in zip(ids, truth, strict=True) if t == 1 and i not in normals)
    for label in ("NORMAL", "PNEUMONIA"):
        proc = _cli(pneumoscan_exe, "review", str(wrong), "--label", label, "--reviewer", "dr-b", env=env)
        assert proc.returncode == 0, proc.stderr
    assert _cli(pneumoscan_exe, "review", "424242", "--label", "NORMAL", "--reviewer", "x",
                env=env).stderr.count("no image with id 424242") == 1

    before = _labels(sessions)
    fitted = _cli(pneumoscan_exe, "calibrate", "--from-reviews", "--min-reviews", "50",
                  "--target-sensitivity", "0.95", env=env)
    assert fitted.returncode == 0, fitted.stderr
    with sessions() as session:
        point = session.query(OperatingPoint).one()
        reviewed = json.loads(point.review_ids)
        threshold = point.threshold
    assert len(reviewed) == 59 + 70 and point.previous_threshold == tiny_bundle.threshold
    figures = json.loads(point.figures)
    assert figures["sensitivity"] >= figures["expected_sensitivity"] >= 0.95 and figures["n"] == len(reviewed)
    assert f"sensitivity to expect on new cases {figures['expected_sensitivity']:.3f}" in fitted.stdout
    after = _labels(sessions)
    assert all(label == ("PNEUMONIA" if p >= threshold else "NORMAL") for label, p, _ in after.values())
    assert all(t == threshold for _, _, t in after.values())
    assert point.relabelled == sum(before[i][0] != after[i][0] for i in before) > 0

    # New results are labelled at the operating point in force.
    new = xrays.distinct_pngs(tmp_path / "new", 1)
    from pneumoscan.pipeline import classify_paths

    (result,) = classify_paths(new, bundle=tiny_bundle, sessions=sessions, settings=settings)
    assert result.threshold == threshold

    undone = _cli(pneumoscan_exe, "calibrate", "--from-reviews", "--undo", env=env)
    assert undone.returncode == 0 and f"threshold is {tiny_bundle.threshold:.4f} again" in undone.stdout
    restored = _labels(sessions)
    assert {i: restored[i][0] for i in before} == {i: before[i][0] for i in before}
    history = _cli(pneumoscan_exe, "calibrate", "--from-reviews", "--history", env=env)
    assert "undone" in history.stdout and f"-> {threshold:.4f}" in history.stdout
    again = _cli(pneumoscan_exe, "calibrate", "--from-reviews", "--undo", env=env)
    assert again.returncode == 1 and "no site operating point is in force" in again.stderr


def _labels(sessions: Any) -> dict[int, tuple[str, float, float]]:
    with sessions() as session:
        return {p.image_id: (p.label, p.probability, p.threshold) for p in session.query(Prediction)}


# --- evaluate decodes as the worker does -----------------------------------------------------------------

@pytest.mark.parametrize("bits", [12, 16])
def test_evaluate_scores_dicom_exactly_as_the_pipeline_does(tmp_path: Path, bits: int, tiny_bundle: Any,
                                                            settings: Any, sessions: Any) -> None:
    from pneumoscan.models.evaluate import score_split
    from pneumoscan.pipeline import classify_paths

    sources = sorted((FIXTURES / "images").rglob("*.jpeg"))[:6]
    data = tmp_path / "DATA"
    paths = []
    for i, source in enumerate(sources):
        folder = data / "test" / source.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        gray = xrays.gray(source).astype(np.float64)
        stored = np.round(gray * ((1 << bits) - 1) / 255.0).astype(np.uint16)
        paths.append(dicoms.write_dicom(source, folder / f"{i}.dcm", stored=stored, bits=bits))
    scored_paths, _, scores = score_split(tiny_bundle, data, "test", helpers.POLICY)
    results = {r.path: r.probability for r in classify_paths(paths, bundle=tiny_bundle, sessions=sessions,
                                                             settings=settings)}
    assert all(results.values())
    np.testing.assert_allclose(scores, [results[str(p)] for p in scored_paths], rtol=0, atol=1e-6)
