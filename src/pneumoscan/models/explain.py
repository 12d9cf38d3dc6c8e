"""Explanations: Grad-CAM heatmaps of the last convolutional stage, and the overlay image written for people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.models.card import BundleError


def _last_conv_output(model: Any) -> Any:
    """The last layer of ``model`` whose output is a 4-D feature map (the last convolutional stage)."""
    for layer in reversed(model.layers[1:]):
        if hasattr(layer, "layers"):  # a nested Keras application hides its feature maps
            break
        if len(layer.output.shape) == 4:
            return layer.output
    raise BundleError(f"model {model.name} has no convolutional feature map to explain")


def _members(model: Any) -> list[tuple[Any, Any]]:
    """(resize layer or None, member model) of an ensemble built by models.ensemble; [] otherwise."""
    by_name = {layer.name: layer for layer in model.layers}
    members = []
    for layer in model.layers:
        if layer.name.startswith("member") and hasattr(layer, "layers"):
            index = layer.name.split("_", 1)[0]
            members.append((by_name.get(f"{index}_resize"), layer))
    return members


def _single(model: Any, x: Any) -> np.ndarray:
    import keras
    import tensorflow as tf

    head = model.get_layer("pneumonia")
    probe = keras.Model(model.inputs, [_last_conv_output(model), head.input])
    with tf.GradientTape() as tape:
        features, pooled = probe(x, training=False)
        # The logit, not the probability: a saturated sigmoid has no gradient left to show.
        logit = tf.reduce_sum(tf.matmul(pooled, head.kernel) + head.bias)
    grads = tape.gradient(logit, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    size = x.shape[1:3]
    return tf.image.resize(cam, size, method="bilinear").numpy()[..., 0]


def _normalize(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, maps / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def grad_cam(model: Any, batch: np.ndarray) -> np.ndarray:
    """One Grad-CAM map per image of a (n, size, size, 1) batch, each scaled to a peak of 1.

    An ensemble's map is the mean of its members' maps, each computed at the member's own input
    size and resized back.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(batch, tf.float32)
    members = _members(model)
    if not members:
        return _normalize(_single(model, x))
    maps = []
    for resize, member in members:
        member_x = resize(x) if resize is not None else x
        member_map = _single(member, member_x)
        maps.append(_normalize(tf.image.resize(member_map[..., None], x.shape[1:3]).numpy()[..., 0]))
    return _normalize(np.mean(maps, axis=0))


def overlay(pixels: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """An RGB uint8 picture: the gray image with the heatmap drawn over it in the 'jet' colour map."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = pixels.shape
    if heatmap.shape != (h, w):
        heatmap = np.asarray(Image.fromarray(heatmap.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    gray = np.repeat(np.clip(pixels, 0, 1)[..., None], 3, axis=-1)
    colour = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3]
    return (np.clip((1 - alpha) * gray + alpha * colour, 0, 1) * 255).astype(np.uint8)


def write_overlay(path: Path, pixels: np.ndarray, heatmap: np.ndarray, caption: str) -> None:
    """Save the overlay as a PNG, labelled as a model heatmap so nobody mistakes it for the image."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(overlay(pixels, heatmap))
    ImageDraw.Draw(picture).text((4, 4), caption, fill=(255, 255, 255))
    picture.save(path, format="PNG")
