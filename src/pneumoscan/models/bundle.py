"""Model bundles: a Keras model file plus a JSON card, loaded lazily and run in whole batches."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.models.card import BundleError, ModelCard
from pneumoscan.models.domain import DomainGate, load_gate
from pneumoscan.models.engine import Engine, EngineConfig, open_engine
from pneumoscan.models.temperature import apply_temperature

__all__ = ["CARD_FILE", "MODEL_FILE", "BundleError", "ModelBundle", "ModelCard", "configure_devices", "file_sha256",
           "load_bundle", "read_card", "write_bundle", "write_card"]

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
CARD_FILE = "card.json"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def configure_devices() -> list[str]:
    """Turn on GPU memory growth so several processes can share one device; return the GPUs seen.

    Must run in the process that will do inference, before its first TensorFlow op.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off stderr
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized in this process; growth can no longer change
            log.warning("GPU %s already initialized; memory growth unchanged", gpu.name)
    log.info("inference devices: %s", [g.name for g in gpus] or ["CPU"])
    return [g.name for g in gpus]


@dataclass(frozen=True)
class ModelBundle:
    """A trained model and its card. The engine loads on first use of ``predict``.

    ``runtime`` picks the engine and precision (``EngineConfig.from_settings``); without one the bundle
    runs on TensorFlow in fp32, as training and evaluation do. Grad-CAM always uses the Keras model.
    """

    path: Path
    card: ModelCard
    _state: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    runtime: EngineConfig = field(default_factory=EngineConfig, compare=False)

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def threshold(self) -> float:
        return self.card.threshold

    @property
    def temperature(self) -> float:
        """The temperature fitted on validation (1.0 for bundles from before calibration)."""
        return self.card.temperature

    def load(self) -> None:
        """Load the engine and the model now (a worker process does this after the fork, before its first task)."""
        self.engine  # noqa: B018

    @property
    def engine(self) -> Engine:
        """The loaded engine (TensorFlow or OpenVINO), with its name and precision."""
        with self._lock:
            if "engine" not in self._state:
                self._state["engine"] = open_engine(self.model_sha256, self.input_size, self.runtime,
                                                    lambda: self.model)
                log.info("loaded model %s from %s on %s (%s)", self.version, self.path,
                         self._state["engine"].name, self._state["engine"].precision)
            return self._state["engine"]

    @property
    def model_sha256(self) -> str:
        """SHA-256 of the model file, read once (the key of converted models in the cache)."""
        with self._lock:
            if "sha256" not in self._state:
                self._state["sha256"] = file_sha256(self.path / MODEL_FILE)
            return self._state["sha256"]

    @property
    def model(self) -> Any:
        """The Keras model itself (loaded on first use)."""
        with self._lock:
            if "model" not in self._state:
                configure_devices()
                import keras

                import pneumoscan.models.layers  # noqa: F401  (registers the custom layers)

                self._state["model"] = keras.models.load_model(self.path / MODEL_FILE, compile=False)
            return self._state["model"]

    @property
    def domain_gate(self) -> DomainGate | None:
        """The bundle's domain gate (``domain.npz`` and the card's ``domain``), or None when it has none."""
        with self._lock:
            if "gate" not in self._state:
                self._state["gate"] = load_gate(self.path, self.card.domain)
            return self._state["gate"]

    def _raw(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The network's own probabilities of a (n, size, size) or (n, size, size, 1) batch, and its features."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[..., None]
        if len(batch) == 0:
            return np.zeros(0, np.float32), None
        raw, features = self.engine.run(batch)
        return np.asarray(raw, dtype=np.float32), features

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities of a batch (as ``predict``) and, with a domain gate, each image's domain score."""
        gate = self.domain_gate
        raw, features = self._raw(batch)
        scores = gate.scores(features) if gate is not None and features is not None else None
        return apply_temperature(raw, self.temperature), scores

    def predict(self, batch: np.ndarray, *, calibrated: bool = True) -> np.ndarray:
        """Probabilities of PNEUMONIA for a (n, size, size) or (n, size, size, 1) batch in [0, 1].

        They are temperature-scaled as the card says unless ``calibrated`` is False (the network's own).
        """
        raw, _ = self._raw(batch)
        return apply_temperature(raw, self.temperature) if calibrated else raw

    def explain(self, batch: np.ndarray) -> np.ndarray:
        """Grad-CAM maps, (n, size, size) in [0, 1], of the last convolutional stage for a batch.

        Only called on demand (review pages, `pneumoscan explain`), never on the batch path.
        """
        from pneumoscan.models.explain import grad_cam

        batch = np.asarray(batch, dtype=np.float32)
        return grad_cam(self.model, batch[..., None] if batch.ndim == 3 else batch)


def read_card(folder: Path) -> ModelCard:
    """The card in ``folder``; BundleError when it is missing, not JSON or not a valid card."""
    card_path = folder / CARD_FILE
    try:
        return ModelCard.from_json(json.loads(card_path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, BundleError) as exc:
        raise BundleError(f"model card {card_path} is unreadable or incomplete: {exc}") from None


def write_card(folder: Path, card: ModelCard) -> None:
    """Write ``card`` as ``folder/card.json`` (the model file is untouched)."""
    (folder / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2) + "\n")


def load_bundle(path: Path, *, verify: bool = False, runtime: EngineConfig | None = None) -> ModelBundle:
    """Read a bundle's card (and with ``verify``, check the model file's SHA-256 against it).

    ``runtime`` is the engine to run it on (default: TensorFlow, fp32).
    """
    card_path, model_path = path / CARD_FILE, path / MODEL_FILE
    if not card_path.is_file() or not model_path.is_file():
        raise BundleError(
            f"no model bundle at {path} (need {MODEL_FILE} and {CARD_FILE}): train one with "
            "`pneumoscan train DATA_DIR --out BUNDLE_DIR` or set PNEUMOSCAN_MODEL to a bundle directory"
        )
    card = read_card(path)
    if verify and card.sha256 != file_sha256(model_path):
        raise BundleError(f"model file {model_path} does not match the sha256 in its card")
    return ModelBundle(path, card, runtime=runtime or EngineConfig())


def write_bundle(out: Path, model: Any, card: ModelCard) -> ModelBundle:
    """Save ``model`` and ``card`` (with the file's SHA-256 set) as a bundle in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    card = replace(card, sha256=file_sha256(out / MODEL_FILE))
    write_card(out, card)
    return ModelBundle(out, card)
