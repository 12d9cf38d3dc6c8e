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

    Each pixel becomes the mid-rank share of its image's pixels at its level or below, so the output
    is the same for any increasing change of intensity that keeps the levels apart (a window, a gamma,
    a contrast curve): what one site's post-processing does differently from another's. Nothing here
    is trained, and no gradient flows through it (it sits on the input).
    """

    def __init__(self, levels: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if levels < 2:
            raise ValueError(f"Equalize needs at least 2 levels, not {levels}")
        self.levels = levels

    def call(self, inputs: Any) -> Any:
        import tensorflow as tf

        flat = tf.reshape(inputs, (tf.shape(inputs)[0], -1))
        top = self.levels - 1
        level = tf.cast(tf.round(tf.clip_by_value(flat, 0.0, 1.0) * top), tf.int32)
        counts = tf.cast(tf.math.bincount(level, minlength=self.levels, maxlength=self.levels, axis=-1),
                         tf.float32)
        below_mid = (tf.cumsum(counts, axis=-1) - counts / 2.0) / tf.cast(tf.shape(flat)[1], tf.float32)
        return tf.reshape(tf.gather(below_mid, level, batch_dims=1), tf.shape(inputs))

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
