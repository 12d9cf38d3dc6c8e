"""Training and evaluation end to end on a tiny folder of real X-rays (seconds, not the full model)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import helpers
import numpy as np
import pytest

from pneumoscan.models import metrics
from pneumoscan.models.bundle import file_sha256, load_bundle, read_card, write_card
from pneumoscan.models.dataset import labels_of, list_split, load_images, patient_split

FIXTURES = Path(__file__).parents[1] / "fixtures"
CLI = str(Path(sys.executable).with_name("pneumoscan"))


def _real_images(label: str) -> list[Path]:
    folders = (FIXTURES / "images" / label, FIXTURES / "test_images" / label)
    return [path for folder in folders for path in sorted(folder.glob("*.jpeg"))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA/train/{NORMAL,PNEUMONIA} from the committed real images; DATA/test is a dangling link.

    Anything that tried to read the test split during training would fail on the dangling link.
    """
    root = tmp_path_factory.mktemp("data")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "train" / label).mkdir(parents=True)
        for path in _real_images(label):
            shutil.copy(path, root / "train" / label / path.name)
    (root / "test").symlink_to(root / "does-not-exist")
    return root


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "bundle"
    result = subprocess.run(
        [CLI, "train", str(data_dir), "--out", str(out), "--architecture", "tiny", "--input-size", "64",
         "--epochs", "2", "--batch-size", "8", "--val-fraction", "0.3", "--version", "tiny-trained",
         "--mixup", "0.2", "--label-smoothing", "0.1"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epoch 2/2" in result.stderr
    return out


@pytest.mark.slow
def test_training_writes_a_loadable_bundle_with_a_complete_card(trained: Path) -> None:
    bundle = load_bundle(trained, verify=True)  # verify: the card's sha256 matches the model file
    card = bundle.card
    assert card.version == "tiny-trained"
    assert card.architecture == "tiny" and card.input_size == 64
    assert card.sha256 == file_sha256(trained / "model.keras")
    for key in ("preprocessing", "threshold_rule", "training", "validation_metrics"):
        assert getattr(card, key), key
    assert card.training is not None and "test split was not read" in card.training["split"]
    assert (card.training_config["mixup"], card.training_config["label_smoothing"]) == (0.2, 0.1)
    # The file on disk keeps its format: test_metrics is there as null until `evaluate --update-card`.
    on_disk = json.loads((trained / "card.json").read_text())
    assert on_disk["test_metrics"] is None and card.test_metrics is None and card.to_json() == on_disk
    assert (trained / "training_curves.png").stat().st_size > 1000
    probabilities = bundle.predict(np.random.default_rng(0).random((3, 64, 64), dtype=np.float32))
    assert probabilities.shape == (3,) and np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.mark.slow
def test_threshold_comes_from_validation_predictions(trained: Path, data_dir: Path) -> None:
    bundle = load_bundle(trained)
    config = bundle.card.training_config
    _, val = patient_split(list_split(data_dir, "train"), config["val_fraction"], config["seed"])
    scores = bundle.predict(load_images(val, 64, helpers.POLICY, exact=True))
    expected = metrics.choose_threshold(labels_of(val), scores, config["min_sensitivity"])
    assert bundle.threshold == pytest.approx(expected, abs=1e-6)
    assert bundle.card.validation_metrics is not None and bundle.card.validation_metrics["n"] == len(val)


@pytest.mark.slow
def test_interrupted_training_resumes_where_it_stopped(data_dir: Path, tmp_path: Path) -> None:
    from pneumoscan.models.recipe import TrainConfig
    from pneumoscan.models.train import train

    config = TrainConfig("tiny", input_size=64, epochs=3, batch_size=8, val_fraction=0.3, version="resumed")
    out = tmp_path / "bundle"

    def crash_after_second_epoch(epoch: int, _logs: dict[str, float]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        train(data_dir, out, config, helpers.POLICY, on_epoch=crash_after_second_epoch)
    assert not (out / "model.keras").exists()
    epochs_seen: list[int] = []
    bundle = train(data_dir, out, config, helpers.POLICY, on_epoch=lambda epoch, _logs: epochs_seen.append(epoch))
    assert epochs_seen == [2]  # only the epoch that was missing
    history = (out / "checkpoints" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2"]
    assert bundle.card.training is not None and bundle.card.training["epochs_run"] == 3


def test_mixup_mixes_each_image_label_and_weight_with_one_partner_by_one_factor() -> None:
    from pneumoscan.models.train import _mixer

    n = 16
    images = np.eye(n, dtype=np.float32).reshape(n, 1, n, 1)  # image i is 1 at pixel i only
    labels = (np.arange(n) % 2).astype(np.float32)
    weights = np.linspace(0.5, 2.0, n).astype(np.float32)
    x, y, w = (np.asarray(t) for t in _mixer(0.4)(images, labels, weights))
    mixed = 0
    for i in range(n):
        row = x[i, 0, :, 0]
        assert row.sum() == pytest.approx(1.0, abs=1e-5) and row.min() >= 0
        others = np.delete(np.arange(n), i)
        j = int(others[np.argmax(row[others])])
        lam = row[i]
        if row[j] > 1e-6:
            mixed += 1
            assert np.count_nonzero(row > 1e-6) == 2  # exactly one partner
        assert y[i] == pytest.approx(lam * labels[i] + (1 - lam) * labels[j], abs=1e-5)
        assert w[i] == pytest.approx(lam * weights[i] + (1 - lam) * weights[j], abs=1e-5)
    assert mixed >= n // 2  # a shuffled partner is rarely the image itself


def _aspect_ratios(stretch: float) -> np.ndarray:
    """Height over width of a bright centred square after the augmenter, over a batch of 64."""
    from pneumoscan.models.train import _augmenter

    square = np.zeros((64, 64, 64, 1), np.float32)
    square[:, 20:44, 20:44] = 1.0
    out = np.asarray(_augmenter(7, stretch)(square))[..., 0] > 0.5
    heights = out.any(axis=2).sum(axis=1)
    widths = out.any(axis=1).sum(axis=1)
    return heights / np.maximum(widths, 1)


def test_stretch_changes_the_aspect_ratio_image_by_image_and_is_off_by_default() -> None:
    plain, stretched = _aspect_ratios(0.0), _aspect_ratios(0.25)
    # Rotation and zoom alone keep a square nearly square; the stretch makes it tall or wide, per image.
    assert np.abs(np.log(plain)).max() < 0.2
    assert (stretched > 1.12).sum() >= 8 and (stretched < 0.89).sum() >= 8


def test_resample_leaves_half_of_the_batches_alone_and_blurs_the_others() -> None:
    import keras

    from pneumoscan.models.train import _resampled

    keras.utils.set_random_seed(0)
    batch = np.random.default_rng(0).random((4, 64, 64, 1)).astype(np.float32)

    def detail(x: np.ndarray) -> float:  # mean absolute difference between horizontal neighbours
        return float(np.abs(np.diff(x, axis=2)).mean())

    untouched = blurred = 0
    for _ in range(40):
        out = np.asarray(_resampled(batch, 0.5))
        assert out.shape == batch.shape
        if np.array_equal(out, batch):
            untouched += 1
        else:
            assert detail(out) < 0.8 * detail(batch)
            blurred += 1
    assert untouched >= 8 and blurred >= 8


@pytest.mark.slow
def test_evaluate_writes_metrics_and_plots(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_dir / "train", data / "test")  # a labelled split to evaluate on
    out = tmp_path / "eval"
    result = subprocess.run([CLI, "evaluate", str(trained), str(data), "--split", "test", "--out", str(out)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "metrics.json").read_text())
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    labels = np.array([row.split(",")[1] == "PNEUMONIA" for row in rows])
    scores = np.array([float(row.split(",")[2]) for row in rows])
    assert report["n"] == len(rows) == sum(1 for _ in (data / "test").rglob("*.jpeg"))
    assert report["data"] == "data"  # the dataset's name, not this machine's path to it
    assert report["roc_auc"] == pytest.approx(metrics.roc_auc(labels, scores), abs=1e-6)
    expected = metrics.confusion(labels, scores, report["threshold"])
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == [[expected["tn"], expected["fp"]],
                                                                      [expected["fn"], expected["tp"]]]
    for name in ("roc", "pr", "confusion_matrix", "calibration"):
        assert (out / f"{name}.png").stat().st_size > 1000, name


@pytest.mark.slow
def test_train_on_a_folder_without_the_layout_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    result = subprocess.run([CLI, "train", str(tmp_path), "--out", str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "must contain the folders NORMAL and PNEUMONIA" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_fine_tuning_starts_from_the_init_bundle_weights(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    import keras

    import pneumoscan.models.layers  # noqa: F401  (registers the custom layers for loading)
    from pneumoscan.models.recipe import TrainConfig
    from pneumoscan.models.train import _initial_model

    start = keras.models.load_model(trained / "model.keras", compile=False)
    config = TrainConfig("tiny", input_size=64, init=str(trained))
    model = _initial_model(config)
    for ours, theirs in zip(model.get_weights(), start.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    fresh = _initial_model(TrainConfig("tiny", input_size=64))
    assert any(not np.array_equal(a, b) for a, b in zip(fresh.get_weights(), start.get_weights(), strict=True))


@pytest.mark.slow
def test_fine_tuning_from_a_mismatched_bundle_is_a_clear_error(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run([CLI, "train", str(data_dir), "--out", str(tmp_path / "b"), "--architecture", "tiny",
                             "--input-size", "96", "--init", str(trained)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "is tiny at 64 px, not tiny at 96 px" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def members(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two more tiny bundles on the same validation split: one at the fixture's 64 px, one at 48 px."""
    from pneumoscan.models.recipe import TrainConfig
    from pneumoscan.models.train import train

    root = tmp_path_factory.mktemp("members")
    out = {}
    for name, size in (("same", 64), ("small", 48)):
        config = TrainConfig("tiny", input_size=size, epochs=1, batch_size=8, val_fraction=0.3, version=name)
        out[name] = train(data_dir, root / name, config, helpers.POLICY).path
    return out


def _ensemble_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "ensemble", *args], capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_ensemble_of_same_size_members_is_their_mean(trained: Path, members: dict[str, Path], data_dir: Path,
                                                     tmp_path: Path) -> None:
    result = _ensemble_cli(str(trained), str(members["same"]), "--data", str(data_dir), "--out", str(tmp_path / "e"),
                           "--version", "tiny-pair")
    assert result.returncode == 0, result.stderr[-2000:]
    combined = load_bundle(tmp_path / "e", verify=True)
    assert combined.card.is_ensemble and combined.card.architecture == "ensemble" and combined.input_size == 64
    assert [m["version"] for m in combined.card.members or ()] == ["tiny-trained", "same"]
    x = load_images(list_split(data_dir, "train")[:12], 64, helpers.POLICY, exact=True)
    expected = (load_bundle(trained).predict(x) + load_bundle(members["same"]).predict(x)) / 2
    np.testing.assert_allclose(combined.predict(x), expected, atol=1e-5)


@pytest.mark.slow
def test_ensemble_takes_the_largest_input_and_its_threshold_from_validation(
        trained: Path, members: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    result = _ensemble_cli(str(members["small"]), str(trained), "--data", str(data_dir), "--out", str(tmp_path / "e"))
    assert result.returncode == 0, result.stderr[-2000:]
    combined = load_bundle(tmp_path / "e", verify=True)
    assert combined.input_size == 64
    config = combined.card.training_config
    _, val = patient_split(list_split(data_dir, "train"), config["val_fraction"], config["seed"])
    scores = combined.predict(load_images(val, 64, helpers.POLICY, exact=True))  # calibrated, as the worker decodes
    assert combined.threshold == pytest.approx(metrics.choose_threshold(labels_of(val), scores, 0.97), abs=1e-6)
    # The 48 px member sees the 64 px image resized inside the model: close to its own 48 px decoding.
    small = load_bundle(members["small"])
    alone = (load_bundle(trained).predict(load_images(val, 64, helpers.POLICY, exact=True), calibrated=False)
             + small.predict(load_images(val, 48, helpers.POLICY, exact=True), calibrated=False)) / 2
    together = combined.predict(load_images(val, 64, helpers.POLICY, exact=True), calibrated=False)
    np.testing.assert_allclose(together, alone, atol=0.02)


@pytest.mark.slow
def test_an_ensemble_member_that_is_an_ensemble_is_flattened_into_equal_members(
        trained: Path, members: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    pair = _ensemble_cli(str(trained), str(members["small"]), "--data", str(data_dir), "--out", str(tmp_path / "p"))
    assert pair.returncode == 0, pair.stderr[-2000:]
    result = _ensemble_cli(str(tmp_path / "p"), str(members["same"]), "--data", str(data_dir), "--out",
                           str(tmp_path / "e"))
    assert result.returncode == 0, result.stderr[-2000:]
    combined = load_bundle(tmp_path / "e", verify=True)
    assert [m["version"] for m in combined.card.members or ()] == ["tiny-trained", "small", "same"]
    x = load_images(list_split(data_dir, "train")[:8], 64, helpers.POLICY, exact=True)
    import keras

    resized = keras.layers.Resizing(48, 48, interpolation="bilinear", antialias=True)(x[..., None])
    small = np.asarray(load_bundle(members["small"]).model(resized, training=False)).ravel()
    thirds = (load_bundle(trained).predict(x, calibrated=False) + small
              + load_bundle(members["same"]).predict(x, calibrated=False)) / 3
    np.testing.assert_allclose(combined.predict(x, calibrated=False), thirds, atol=1e-5)


@pytest.mark.slow
def test_ensemble_of_bundles_from_different_splits_is_a_clear_error(trained: Path, data_dir: Path,
                                                                    tmp_path: Path) -> None:
    from pneumoscan.models.recipe import TrainConfig
    from pneumoscan.models.train import train

    other = train(data_dir, tmp_path / "other", TrainConfig("tiny", input_size=64, epochs=1, batch_size=8,
                                                             val_fraction=0.3, seed=1), helpers.POLICY).path
    result = _ensemble_cli(str(trained), str(other), "--data", str(data_dir), "--out", str(tmp_path / "e"))
    assert result.returncode != 0 and "not trained on one validation split" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "e").exists()
    result = _ensemble_cli(str(trained), "--data", str(data_dir), "--out", str(tmp_path / "e"))
    assert result.returncode != 0 and "at least two bundles" in result.stderr


@pytest.mark.slow
def test_ensemble_members_must_share_the_decoding_not_what_each_model_does_itself(
        trained: Path, members: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(members["same"], old)
    decoding = read_card(trained).preprocessing.split(";")[0]
    write_card(old, replace(read_card(old), preprocessing=decoding + "; the model standardizes each image itself"))
    result = _ensemble_cli(str(trained), str(old), "--data", str(data_dir), "--out", str(tmp_path / "e"))
    assert result.returncode == 0, result.stderr[-2000:]
    write_card(old, replace(read_card(old), preprocessing="decode at 8 bits, equalize; the model does the rest"))
    result = _ensemble_cli(str(trained), str(old), "--data", str(data_dir), "--out", str(tmp_path / "f"))
    assert result.returncode != 0 and "preprocess their input differently" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "f").exists()


@pytest.mark.slow
def test_calibrate_validation_refits_an_old_bundles_temperature_and_threshold(trained: Path, data_dir: Path,
                                                                              tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    # A card from before calibration: no calibration entry, no warnings, the default threshold.
    write_card(old, replace(read_card(old), calibration=None, warnings=None, threshold=0.5))
    assert not {"calibration", "warnings"} & set(json.loads((old / "card.json").read_text()))
    env = {"PNEUMOSCAN_MODEL": str(old), "PNEUMOSCAN_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([CLI, "calibrate", "--validation", str(data_dir)], capture_output=True, text=True,
                            timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    refit = load_bundle(old, verify=True)
    assert refit.version == "tiny-trained" and refit.temperature == pytest.approx(
        load_bundle(trained).temperature, rel=1e-4)
    _, val = patient_split(list_split(data_dir, "train"), 0.3, 0)
    scores = refit.predict(load_images(val, 64, helpers.POLICY, exact=True))
    assert refit.threshold == pytest.approx(metrics.choose_threshold(labels_of(val), scores, 0.97), abs=1e-6)
    assert refit.card.calibration is not None
    assert refit.card.calibration.after["nll"] <= refit.card.calibration.before["nll"] + 1e-9
    wrong = subprocess.run([CLI, "calibrate", "--validation", str(tmp_path)], capture_output=True, text=True,
                           timeout=240, env=env)
    assert wrong.returncode == 1 and "was trained on 'data" in wrong.stderr and "Traceback" not in wrong.stderr


def _soup_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "soup", *args], capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def reseeded(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `members["same"]` recipe again with another training seed, through the CLI's --train-seed."""
    out = tmp_path_factory.mktemp("reseeded") / "bundle"
    result = subprocess.run(
        [CLI, "train", str(data_dir), "--out", str(out), "--architecture", "tiny", "--input-size", "64",
         "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.3", "--train-seed", "7", "--version", "seed7"],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.slow
def test_another_training_seed_keeps_the_validation_split_and_changes_the_weights(
        reseeded: Path, members: dict[str, Path]) -> None:
    again, same = load_bundle(reseeded), load_bundle(members["same"])
    assert again.card.training_config["train_seed"] == 7 and again.card.validation_split == same.card.validation_split
    assert again.card.training["validation_images"] == same.card.training["validation_images"]
    pairs = zip(again.model.get_weights(), same.model.get_weights(), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)


@pytest.mark.slow
def test_soup_is_one_network_with_the_mean_of_the_ingredients_weights(
        reseeded: Path, members: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    result = _soup_cli(str(members["same"]), str(reseeded), "--data", str(data_dir), "--out", str(tmp_path / "s"),
                       "--version", "tiny-soup")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "soup of 2 bundles" in result.stdout
    souped = load_bundle(tmp_path / "s", verify=True)
    a, b = load_bundle(members["same"]), load_bundle(reseeded)
    card = souped.card
    assert not card.is_ensemble and card.architecture == "tiny" and card.version == "tiny-soup"
    assert [i["version"] for i in card.training["soup_of"]] == ["same", "seed7"]
    assert [i["train_seed"] for i in card.training["soup_of"]] == [0, 7]
    assert all("config" not in i for i in card.training["soup_of"])  # one recipe: nothing is per ingredient
    assert "train_seed" not in card.training_config and card.training_config["epochs"] == 1
    assert souped.model.count_params() == a.model.count_params()
    for mean, wa, wb in zip(souped.model.get_weights(), a.model.get_weights(), b.model.get_weights(), strict=True):
        if np.issubdtype(wa.dtype, np.floating):
            np.testing.assert_allclose(mean, (wa + wb) / 2, rtol=1e-6, atol=1e-7)
    # Calibrated on the ingredients' validation split, by the usual rule.
    config = card.training_config
    _, val = patient_split(list_split(data_dir, "train"), config["val_fraction"], config["seed"])
    scores = souped.predict(load_images(val, 64, helpers.POLICY, exact=True))
    assert souped.threshold == pytest.approx(metrics.choose_threshold(labels_of(val), scores, 0.97), abs=1e-6)


@pytest.mark.slow
def test_soup_of_a_bundle_with_itself_is_that_bundle(members: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    same = str(members["same"])
    result = _soup_cli(same, same, "--data", str(data_dir), "--out", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr[-2000:]
    x = load_images(list_split(data_dir, "train")[:12], 64, helpers.POLICY, exact=True)
    np.testing.assert_allclose(load_bundle(tmp_path / "s").predict(x, calibrated=False),
                               load_bundle(members["same"]).predict(x, calibrated=False), atol=1e-6)


@pytest.mark.slow
def test_soup_card_keeps_each_ingredients_own_options_and_claims_only_the_shared_ones(
        trained: Path, members: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    result = _soup_cli(str(trained), str(members["same"]), "--data", str(data_dir), "--out", str(tmp_path / "s"),
                       "--version", "tiny-mixed")
    assert result.returncode == 0, result.stderr[-2000:]
    card = load_bundle(tmp_path / "s", verify=True).card
    config = card.training_config
    # The first ingredient's mixup, label smoothing and epochs are not the soup's recipe ...
    assert not {"mixup", "label_smoothing", "epochs"} & set(config)
    assert config["input_size"] == 64 and config["val_fraction"] == 0.3 and config["version"] == "tiny-mixed"
    # ... they are recorded per ingredient, beside what the ingredients share.
    own = [i["config"] for i in card.training["soup_of"]]
    assert own == [{"epochs": 2, "mixup": 0.2, "label_smoothing": 0.1}, {"epochs": 1, "mixup": 0.0,
                                                                         "label_smoothing": 0.0}]


@pytest.mark.slow
def test_soup_refuses_bundles_that_are_not_one_network_in_one_line(
        trained: Path, members: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    same, small = str(members["same"]), str(members["small"])
    result = _soup_cli(same, small, "--data", str(data_dir), "--out", str(tmp_path / "s"))
    assert result.returncode != 0 and "not trained from one recipe" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s").exists()
    pair = _ensemble_cli(str(trained), str(members["same"]), "--data", str(data_dir), "--out", str(tmp_path / "p"))
    assert pair.returncode == 0, pair.stderr[-2000:]
    result = _soup_cli(str(tmp_path / "p"), str(members["same"]), "--data", str(data_dir), "--out", str(tmp_path / "s"))
    assert result.returncode != 0 and "is an ensemble" in result.stderr and "Traceback" not in result.stderr
    result = _soup_cli(str(members["same"]), "--data", str(data_dir), "--out", str(tmp_path / "s"))
    assert result.returncode != 0 and "at least two bundles" in result.stderr and not (tmp_path / "s").exists()
