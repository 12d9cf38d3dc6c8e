"""Inference engines behind one interface: TensorFlow (the reference, and any GPU) or OpenVINO on a CPU.

``ModelBundle.predict`` calls an :class:`Engine` with a (n, size, size, 1) float32 batch and gets the
network's own probabilities back; temperature scaling and thresholds stay in the bundle. ``Engine.run``
also gives the penultimate features (the classifier's input), which the domain gate scores. The OpenVINO
model is converted once per machine from the Keras model (``openvino.convert_model`` on a ``tf.function``
with a fixed input signature) and cached under ``cache_dir``, keyed by the model file's SHA-256, the engine,
the precision and the library's version, so a process that finds it never imports TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pneumoscan.config import Settings
from pneumoscan.models.card import BundleError

__all__ = ["ENGINES", "PRECISIONS", "Engine", "EngineConfig", "EngineError", "check_record_path", "int8_dir",
           "ir_dir", "open_engine", "openvino_ir", "openvino_version", "resolve_engine", "save_ir", "with_features"]

log = logging.getLogger(__name__)

ENGINES = ("auto", "tensorflow", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
# int8 is a quantized IR (``int8_dir``); what NNCF left unquantized runs in f32.
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class EngineError(BundleError):
    """An engine or precision that cannot be used here; the message is one line that says what to do."""


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs a bundle, at which precision, and where converted models are cached."""

    engine: str = "tensorflow"
    precision: str = "fp32"
    cache_dir: Path | None = None
    threads: int = 0
    streams: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(settings.engine, settings.precision, settings.model_cache, settings.engine_threads,
                   settings.engine_streams)


class Engine(Protocol):
    """A loaded model: a float32 batch in, the network's probabilities of PNEUMONIA out (shape (n,)).

    ``run`` gives the probabilities and the penultimate features, (n, d), or None for a model without one
    layer feeding its classifier (an ensemble).
    """

    name: str
    precision: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


FEATURE_LAYER = "dropout"  # the layer in front of every architecture's classifier: its input is the features


def with_features(model: Any) -> Any:
    """``model`` with a second output, the features its classifier reads (the input of its ``dropout`` layer).

    A model without that layer (an ensemble, whose members each have their own) is returned as it is.
    """
    import keras

    try:
        layer = model.get_layer(FEATURE_LAYER)
    except ValueError:
        return model
    return keras.Model(model.inputs, [model.outputs[0], layer.input], name=f"{model.name}_with_features")


def _split(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    probabilities = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
    features = np.asarray(outputs[1], dtype=np.float32).reshape(len(probabilities), -1) if len(outputs) > 1 else None
    return probabilities, features


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible to this machine, found without importing TensorFlow."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def openvino_version() -> str:
    from importlib.metadata import version

    return version("openvino")


def resolve_engine(name: str) -> str:
    """The engine ``name`` means here: ``auto`` is TensorFlow on a GPU, else OpenVINO when installed."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    if name == "auto":
        return "tensorflow" if gpu_present() or not openvino_installed() else "openvino"
    if name == "openvino" and not openvino_installed():
        raise EngineError("PNEUMOSCAN_ENGINE=openvino but the openvino package is not installed: "
                          "`pip install openvino`, or set PNEUMOSCAN_ENGINE=auto")
    return name


def _key(sha256: str, precision: str) -> str:
    return f"{sha256}-openvino{openvino_version()}-{precision}"


def ir_dir(cache_dir: Path, sha256: str) -> Path:
    """Where the OpenVINO IR of one model is cached. The IR is full precision (the precision is a compile-time
    hint, so fp32 and bf16 share it) with two outputs, the probability and the features ("-features": IRs
    from before had only the first)."""
    return cache_dir / f"{_key(sha256, 'fp32')}-features"


def int8_dir(cache_dir: Path, sha256: str) -> Path:
    """Where the int8 IR of one model is cached: ``ir_dir``'s IR quantized by NNCF (``models.quantize``), with
    both outputs, and the record of its calibration beside it."""
    return cache_dir / f"{_key(sha256, 'int8')}-features"


def check_record_path(cache_dir: Path, sha256: str, precision: str) -> Path:
    """Where `pneumoscan model check` records its figures for one model, precision and OpenVINO version."""
    return cache_dir / "checks" / f"{_key(sha256, precision)}.json"


def _checked(cache_dir: Path, sha256: str, precision: str) -> bool:
    try:
        return bool(json.loads(check_record_path(cache_dir, sha256, precision).read_text()).get("passed"))
    except (OSError, ValueError):
        return False


class TensorFlowEngine:
    """The Keras model under one ``tf.function`` with a fixed input signature (the reference engine)."""

    name = "tensorflow"
    precision = "fp32"

    def __init__(self, model: Any, size: int) -> None:
        import tensorflow as tf

        self._tf = tf
        model = with_features(model)
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                                 input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32)])

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self._call(self._tf.convert_to_tensor(batch, self._tf.float32))
        return _split(list(out) if isinstance(out, list | tuple) else [out])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)[0]


_core_lock = threading.Lock()
_core: Any = None


def _openvino() -> Any:
    """Import openvino with its usage telemetry off: OpenVINO's tools send events to Google Analytics from
    ``import openvino`` and ``convert_model`` unless ``openvino_telemetry`` cannot be imported, when they use
    their own no-op stub. A medical device phones nobody, so it cannot be imported here."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


def _ov_core() -> Any:
    global _core
    with _core_lock:
        if _core is None:
            _core = _openvino().Core()
        return _core


def cpu_has_bf16() -> bool:
    return "BF16" in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINOEngine:
    """A compiled OpenVINO model on the CPU, in throughput mode: a batch is split over one inference request per
    stream, run at once (each stream has its own threads), so the cores stay busy through the model's small
    late layers. One batch runs at a time (the pipeline predicts serially).

    ``streams`` 0 and ``threads`` 0 leave the numbers to OpenVINO (on 2 cores: 2 streams of 1 thread); 1 stream
    is the single-request way (OpenVINO's latency mode). Splitting changes no figure: each image is computed
    alone whatever its neighbours.
    """

    name = "openvino"

    def __init__(self, xml: Path, precision: str, threads: int = 0, streams: int = 0) -> None:
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_HINT[precision],
                                  "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if streams > 1:
            config["NUM_STREAMS"] = streams
        self.precision = precision
        self._compiled = _ov_core().compile_model(str(xml), "CPU", config)
        requests = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = [self._compiled.create_infer_request() for _ in range(requests)]
        self._lock = threading.Lock()

    @property
    def streams(self) -> int:
        return len(self._requests)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = np.array_split(batch, min(len(self._requests), len(batch))) if len(batch) else [batch]
        ports = range(len(self._compiled.outputs))
        with self._lock:
            used = list(zip(self._requests, parts, strict=False))
            for request, part in used:
                request.start_async({0: part})
            outputs: list[list[np.ndarray]] = []
            for request, _ in used:
                request.wait()
                outputs.append([np.array(request.get_output_tensor(i).data) for i in ports])
        return _split([np.concatenate([out[i] for out in outputs]) for i in ports])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)[0]


def convert_to_openvino(model: Any, size: int, dest: Path) -> Path:
    """Convert a Keras model to OpenVINO IR in ``dest`` (written whole in a temporary folder, then renamed).

    When another process renamed its copy first, that one is kept. Returns the path of the .xml file.
    """
    import tensorflow as tf

    ov = _openvino()
    model = with_features(model)
    call = tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32)])
    return save_ir(ov.convert_model(call.get_concrete_function()), dest)


def save_ir(model: Any, dest: Path, extra: dict[str, str] | None = None) -> Path:
    """Save an OpenVINO model as IR in ``dest`` (written whole in a temporary folder with the ``extra`` text
    files, then renamed). When another process renamed its copy first, that one is kept. Returns the .xml path.
    """
    ov = _openvino()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
        for name in ("model.xml", "model.bin", *(extra or {})):
            with (tmp / name).open("rb") as fh:
                os.fsync(fh.fileno())
        try:
            tmp.rename(dest)
        except OSError:  # another process got there first: its copy is the same conversion
            if not (dest / "model.xml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "model.xml"


def openvino_ir(sha256: str, size: int, cache_dir: Path, keras_model: Callable[[], Any]) -> Path:
    """The full-precision IR of the model whose file has ``sha256``, converted into ``cache_dir`` if not there."""
    dest = ir_dir(cache_dir, sha256)
    xml = dest / "model.xml"
    if not xml.is_file():
        log.info("converting the model to OpenVINO into %s (once per machine and model)", dest)
        xml = convert_to_openvino(keras_model(), size, dest)
    return xml


def open_engine(sha256: str, size: int, config: EngineConfig, keras_model: Callable[[], Any], *,
                unchecked: bool = False) -> Engine:
    """The engine ``config`` asks for, for the model whose file has ``sha256``.

    ``keras_model`` loads the Keras model; it is called only for TensorFlow or to convert a model that is
    not yet in the cache. A precision other than fp32 is refused unless its check passed on this machine
    (``unchecked``: only for the check itself).
    """
    engine = resolve_engine(config.engine)
    if config.precision not in PRECISIONS:
        raise EngineError(f"unknown precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if engine == "tensorflow":
        if config.precision != "fp32":
            raise EngineError(f"precision {config.precision} needs PNEUMOSCAN_ENGINE=openvino (TensorFlow runs fp32)")
        return TensorFlowEngine(keras_model(), size)
    if config.cache_dir is None:
        raise EngineError("the OpenVINO engine needs a model cache folder (PNEUMOSCAN_MODEL_CACHE_DIR)")
    if config.precision == "bf16" and not cpu_has_bf16():
        raise EngineError("precision bf16 needs a CPU with BF16 instructions; this one has none: use fp32")
    if config.precision != "fp32" and not unchecked and not _checked(config.cache_dir, sha256, config.precision):
        raise EngineError(f"precision {config.precision} has not passed `pneumoscan model check DATA --precision "
                          f"{config.precision}` on this machine for this model and OpenVINO {openvino_version()}; "
                          "run it, or set PNEUMOSCAN_PRECISION=fp32")
    if config.precision == "int8":
        xml = int8_dir(config.cache_dir, sha256) / "model.xml"
        if not xml.is_file():
            raise EngineError("precision int8 needs the model quantized on this machine: run `pneumoscan model "
                              "check DATA --precision int8` (it calibrates on DATA's train split), or set "
                              "PNEUMOSCAN_PRECISION=fp32")
    else:
        xml = openvino_ir(sha256, size, config.cache_dir, keras_model)
    return OpenVINOEngine(xml, config.precision, config.threads, config.streams)
