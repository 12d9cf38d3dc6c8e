"""The Equalize layer: per-image histogram equalization inside the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumoscan.models.architectures import build_model
from pneumoscan.models.bundle import ModelCard, load_bundle, write_bundle
from pneumoscan.models.layers import Equalize


def _mid_rank(image: np.ndarray, levels: int = 256) -> np.ndarray:
    """The reference, in numpy: linear binning, the mid-rank share of each level, interpolated back."""
    scaled = np.clip(image, 0, 1).ravel() * (levels - 1)
    below = np.minimum(np.floor(scaled), levels - 2).astype(int)
    share = scaled - below
    counts = np.bincount(below, 1 - share, minlength=levels) + np.bincount(below + 1, share, minlength=levels)
    mid = (np.cumsum(counts) - counts / 2) / scaled.size
    return (mid[below] * (1 - share) + mid[below + 1] * share).reshape(image.shape)


def _rounded_mid_rank(image: np.ndarray, levels: int = 256) -> np.ndarray:
    """Plain equalization: each pixel counted at its nearest level."""
    level = np.rint(np.clip(image, 0, 1) * (levels - 1)).astype(int)
    counts = np.bincount(level.ravel(), minlength=levels)
    return ((np.cumsum(counts) - counts / 2) / level.size)[level]


def _levels(rng: np.random.Generator, shape: tuple[int, ...], top: int) -> np.ndarray:
    """Images on the 8-bit grid using only levels 0..top."""
    return (rng.integers(0, top + 1, shape) / 255.0).astype(np.float32)


def test_each_image_is_equalized_on_its_own_histogram() -> None:
    rng = np.random.default_rng(0)
    batch = np.stack([rng.random((20, 24)), rng.random((20, 24)) ** 3, 0.4 + 0.1 * rng.random((20, 24))])
    out = np.asarray(Equalize()(batch[..., None].astype(np.float32)))[..., 0]
    for image, equalized in zip(batch, out, strict=True):
        np.testing.assert_allclose(equalized, _mid_rank(image), atol=1e-6)
    # The flat third image is spread over (0, 1) like the others.
    assert out[2].min() < 0.05 and out[2].max() > 0.95


def test_on_8_bit_images_it_is_plain_equalization() -> None:
    image = _levels(np.random.default_rng(4), (2, 40, 30, 1), 255)
    out = np.asarray(Equalize()(image))
    for one, equalized in zip(image, out, strict=True):
        np.testing.assert_allclose(equalized, _rounded_mid_rank(one), atol=1e-5)


def test_the_output_moves_continuously_with_the_input() -> None:
    """A decode that differs by a hair must not change the picture by more: plain equalization jumps
    where a pixel crosses the middle between two levels."""
    rng = np.random.default_rng(5)
    middles = rng.random((1, 32, 32, 1)) < 0.5  # half the pixels just below the middle between two levels
    image = (rng.integers(0, 255, (1, 32, 32, 1)) + np.where(middles, 0.5 - 1e-4, 0.0)) / 255.0
    nudged = image + np.where(middles, 2e-4, 0.0) / 255.0  # and now just above it
    jump = np.abs(_rounded_mid_rank(nudged[0]) - _rounded_mid_rank(image[0])).max()
    assert jump > 1e-3
    moved = np.abs(np.asarray(Equalize()(nudged.astype(np.float32))) - np.asarray(Equalize()(image.astype(np.float32))))
    assert moved.max() < 1e-4, moved.max()


def test_an_increasing_change_of_intensity_gives_the_same_picture() -> None:
    rng = np.random.default_rng(1)
    image = _levels(rng, (2, 32, 32, 1), 127)
    k = np.rint(image * 255).astype(int)
    stretched = (2 * k / 255.0).astype(np.float32)  # twice the contrast
    gamma = (np.rint(255 * (k / 127.0) ** 0.6) / 255.0).astype(np.float32)  # a gamma curve, levels kept apart
    assert np.abs(stretched - image).max() > 0.4 and np.abs(gamma - image).max() > 0.2
    reference = np.asarray(Equalize()(image))
    np.testing.assert_array_equal(np.asarray(Equalize()(stretched)), reference)
    np.testing.assert_array_equal(np.asarray(Equalize()(gamma)), reference)


def test_fewer_than_two_levels_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 levels"):
        Equalize(levels=1)


def test_a_model_with_equalize_survives_its_bundle_and_ignores_contrast(tmp_path: Path) -> None:
    model = build_model("tiny", 32, dropout=0.0, equalize=True)
    assert model.get_layer("equalize").levels == 256
    bundle = write_bundle(tmp_path / "b", model, ModelCard(version="eq-1", input_size=32, threshold=0.5,
                                                           architecture="tiny"))
    loaded = load_bundle(bundle.path, verify=True)
    image = _levels(np.random.default_rng(2), (3, 32, 32), 127)
    gamma = (np.rint(255 * (np.rint(image * 255) / 127.0) ** 0.6) / 255.0).astype(np.float32)
    in_memory = model.predict(image[..., None], verbose=0)[:, 0]
    np.testing.assert_allclose(loaded.predict(image, calibrated=False), in_memory, atol=1e-6)
    np.testing.assert_allclose(loaded.predict(gamma), loaded.predict(image), atol=1e-6)
    # Without the layer (the tiny net only standardizes) the same curve does move the output.
    plain = build_model("tiny", 32, dropout=0.0)
    moved = plain.predict(gamma[..., None], verbose=0) - plain.predict(image[..., None], verbose=0)
    assert np.abs(moved).max() > 1e-4
