"""Custom Keras layers that are part of saved models, so preprocessing travels with the weights."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# Mean and std of ImageNet in RGB order, on a 0-1 scale, for "torch"-style backbones.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="pneumoscan")
class Standardize(keras.layers.Layer):
    """Per-image zero mean, unit variance: removes exposure and contrast differences between sites."""

    def call(self, inputs: Any) -> Any:
        mean = ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        std = ops.std(inputs, axis=(1, 2, 3), keepdims=True)
        return (inputs - mean) / ops.maximum(std, 1e-3)


@keras.saving.register_keras_serializable(package="pneumoscan")
class Equalize(keras.layers.Layer):
    """Per-image histogram equalization of a [0, 1] grayscale batch over ``levels`` gray levels.

    Each level maps to the mid-rank share of its image's pixels at that level or below, so the output
    is the same for any increasing change of intensity that keeps the levels apart (a window, a gamma,
    a contrast curve): what one site's post-processing does differently from another's. A value between
    two levels counts towards both in proportion (linear binning), and its output is interpolated
    between theirs, so that the output moves continuously with the input: a decode that differs by a
    hair gives a picture that differs by a hair. On values that lie on the levels (8-bit images) this
    is plain equalization. Nothing here is trained, and no gradient flows through it (it sits on the input).
    """

    def __init__(self, levels: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if levels < 2:
            raise ValueError(f"Equalize needs at least 2 levels, not {levels}")
        self.levels = levels

    def call(self, inputs: Any) -> Any:
        import tensorflow as tf

        batch = tf.shape(inputs)[0]
        flat = tf.reshape(inputs, (batch, -1))
        top = float(self.levels - 1)
        scaled = tf.clip_by_value(flat, 0.0, 1.0) * top
        below = tf.minimum(tf.floor(scaled), top - 1.0)  # the level at or below, so that below + 1 exists
        share = scaled - below  # of the level above: 0 on a level, 1 only at the top one
        index = tf.cast(below, tf.int32) + tf.range(batch)[:, None] * self.levels
        counts = tf.math.unsorted_segment_sum(tf.concat([1.0 - share, share], axis=1),
                                              tf.concat([index, index + 1], axis=1), batch * self.levels)
        counts = tf.reshape(counts, (batch, self.levels))
        mid = tf.reshape((tf.cumsum(counts, axis=-1) - counts / 2.0) / tf.cast(tf.shape(flat)[1], tf.float32), [-1])
        out = tf.gather(mid, index) * (1.0 - share) + tf.gather(mid, index + 1) * share
        return tf.reshape(out, tf.shape(inputs))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "levels": self.levels}


@keras.saving.register_keras_serializable(package="pneumoscan")
class GrayToBackbone(keras.layers.Layer):
    """Turn a [0, 1] grayscale batch into the 3-channel input a Keras application expects.

    ``mode`` follows keras.applications' preprocess_input: "tf" ([-1, 1]), "torch" (ImageNet
    mean/std), "caffe" (BGR, mean subtracted, 0-255) or "raw" (0-255, the model rescales itself).
    """

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("tf", "torch", "caffe", "raw"):
            raise ValueError(f"unknown backbone preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        rgb = ops.concatenate([inputs, inputs, inputs], axis=-1)
        if self.mode == "tf":
            return rgb * 2.0 - 1.0
        if self.mode == "torch":
            return (rgb - ops.array(_IMAGENET_MEAN)) / ops.array(_IMAGENET_STD)
        if self.mode == "caffe":
            return rgb * 255.0 - ops.array(_CAFFE_BGR_MEAN)
        return rgb * 255.0

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}
