"""The model card: what a bundle's ``card.json`` says about its model, as a typed, frozen value.

The JSON on disk is the format; ``ModelCard.from_json`` checks it and ``to_json`` gives it back.
Keys the card has no field for (test figures, known limitations, selection notes, ...) are kept
in ``extra`` and written back unchanged, so reading then writing a card loses nothing. Derived
cards are made with ``dataclasses.replace``. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Threshold rule used when a card's training config does not record one.
DEFAULT_MIN_SENSITIVITY = 0.97


def threshold_rule(min_sensitivity: float) -> str:
    """How a card states the rule that placed its threshold on the validation split."""
    return f"highest threshold with validation sensitivity >= {min_sensitivity}"

# The order keys are written in: the card's own fields, in the order training has always written
# them, then anything else in the order it was read.
_KEY_ORDER = ("version", "architecture", "input_size", "preprocessing", "threshold", "threshold_rule", "labels",
              "output", "created_at", "parameters", "members", "training", "calibration", "validation_metrics",
              "warnings", "test_metrics", "sha256")


_CALIBRATION_KEYS = ("method", "temperature", "fitted_on", "before", "after")


class BundleError(Exception):
    """A model bundle that is missing or unusable; the message says what to do."""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _ill_typed(where: str, key: str, wanted: str, value: Any) -> BundleError:
    return BundleError(f"{where}'{key}' must be {wanted}, not {_json_type(value)}")


def _string(data: Mapping[str, Any], key: str, where: str = "") -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise _ill_typed(where, key, "a non-empty string", value)
    return value


def _integer(data: Mapping[str, Any], key: str, where: str = "") -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _ill_typed(where, key, "a positive integer", value)
    return value


def _number(data: Mapping[str, Any], key: str, where: str = "", *, probability: bool = False) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or (probability and not 0.0 <= value <= 1.0):
        raise _ill_typed(where, key, "a number in [0, 1]" if probability else "a finite number", value)
    return float(value)


def _object(data: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = data[key]
    if not isinstance(value, Mapping):
        raise _ill_typed(where, key, "an object", value)
    return copy.deepcopy(dict(value))


def _strings(data: Mapping[str, Any], key: str, where: str = "") -> tuple[str, ...]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _ill_typed(where, key, "a list of strings", value)
    return tuple(value)


def _objects(data: Mapping[str, Any], key: str, where: str = "") -> tuple[dict[str, Any], ...]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise _ill_typed(where, key, "a list of objects", value)
    return tuple(copy.deepcopy(dict(v)) for v in value)


def _require(data: Any, keys: tuple[str, ...], what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise BundleError(f"{what} must be a JSON object, not {_json_type(data)}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise BundleError(f"{what} is missing {', '.join(repr(k) for k in missing)}")
    return data


def _plain(value: Any) -> Any:
    """A deep copy of ``value`` in plain JSON types (tuples become lists, mappings dicts)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Calibration:
    """The card's ``calibration`` entry: the temperature fitted on validation and the figures around it."""

    method: str  # "temperature"
    temperature: float
    fitted_on: str  # "validation"
    before: Mapping[str, float]  # brier, ece and nll of the network's own scores
    after: Mapping[str, float]  # the same, temperature-scaled
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Calibration:
        where = "calibration "
        data = _require(data, _CALIBRATION_KEYS, "the card's calibration")
        temperature = _number(data, "temperature", where)
        if temperature <= 0:
            raise BundleError(f"calibration 'temperature' must be positive, not {temperature}")
        return cls(method=_string(data, "method", where), temperature=temperature,
                   fitted_on=_string(data, "fitted_on", where), before=_object(data, "before", where),
                   after=_object(data, "after", where),
                   extra={k: copy.deepcopy(v) for k, v in data.items() if k not in _CALIBRATION_KEYS})

    def to_json(self) -> dict[str, Any]:
        return _plain({"method": self.method, "temperature": self.temperature, "fitted_on": self.fitted_on,
                       "before": self.before, "after": self.after, **self.extra})


@dataclass(frozen=True)
class ModelCard:
    """A model bundle's card. ``version``, ``input_size`` and ``threshold`` are required; the rest is optional.

    An optional field that is None is absent from the JSON (or null there, if the card read had it
    as null: ``null_keys``). ``extra`` holds every other key, written back as it was read.
    """

    version: str
    input_size: int
    threshold: float  # applies to the temperature-scaled probability
    architecture: str | None = None  # "ensemble" for an ensemble bundle
    preprocessing: str | None = None
    threshold_rule: str | None = None
    labels: tuple[str, ...] | None = None
    output: str | None = None
    created_at: str | None = None  # ISO 8601, as written
    parameters: int | None = None
    sha256: str | None = None  # of model.keras; write_bundle sets it
    calibration: Calibration | None = None
    training: Mapping[str, Any] | None = None  # data, config, split, image counts, ...: the provenance
    members: tuple[Mapping[str, Any], ...] | None = None  # an ensemble's networks (version, sha256, ...)
    validation_metrics: Mapping[str, Any] | None = None
    warnings: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    null_keys: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        clash = set(self.extra) & _FIELD_KEYS
        if clash:
            raise ValueError(f"extra must not hold the card's own fields: {sorted(clash)}")

    # --- JSON ------------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCard:
        """Check a card read from JSON and make it; BundleError says in one line what is wrong."""
        data = _require(data, ("version", "input_size", "threshold"), "the card")
        present = {k for k in _FIELD_KEYS if data.get(k) is not None}
        text = {k: _string(data, k) for k in ("architecture", "preprocessing", "threshold_rule", "output",
                                              "created_at", "sha256") if k in present}
        return cls(
            version=_string(data, "version"),
            input_size=_integer(data, "input_size"),
            threshold=_number(data, "threshold", probability=True),
            labels=_strings(data, "labels") if "labels" in present else None,
            parameters=_integer(data, "parameters") if "parameters" in present else None,
            calibration=Calibration.from_json(data["calibration"]) if "calibration" in present else None,
            training=_object(data, "training") if "training" in present else None,
            members=_objects(data, "members") if "members" in present else None,
            validation_metrics=_object(data, "validation_metrics") if "validation_metrics" in present else None,
            warnings=_strings(data, "warnings") if "warnings" in present else None,
            extra={k: copy.deepcopy(v) for k, v in data.items() if k not in _FIELD_KEYS},
            null_keys=frozenset(k for k in _FIELD_KEYS if k in data and data[k] is None),
            **text,
        )

    def to_json(self) -> dict[str, Any]:
        """The card as written to ``card.json`` (plain JSON types; a copy the caller may change)."""
        values: dict[str, Any] = {}
        for name in _FIELD_KEYS:
            value = getattr(self, name)
            if value is not None:
                values[name] = value.to_json() if isinstance(value, Calibration) else _plain(value)
            elif name in self.null_keys:
                values[name] = None
        values.update(_plain(dict(self.extra)))
        return {**{k: values.pop(k) for k in _KEY_ORDER if k in values}, **values}

    # --- derived values --------------------------------------------------------------------------

    @property
    def temperature(self) -> float:
        """The temperature fitted on validation (1.0 for bundles from before calibration)."""
        return self.calibration.temperature if self.calibration is not None else 1.0

    @property
    def is_ensemble(self) -> bool:
        return self.architecture == "ensemble"

    @property
    def training_config(self) -> Mapping[str, Any]:
        """The training run's configuration (empty when the card does not record one)."""
        config = (self.training or {}).get("config")
        return config if isinstance(config, Mapping) else {}

    @property
    def training_data(self) -> str | None:
        """The name of the data folder the model was trained on, if the card records it."""
        data = (self.training or {}).get("data")
        return None if data is None else str(data)

    @property
    def validation_split(self) -> tuple[str | None, float | None, int | None]:
        """(data, val_fraction, seed) of the patient-wise validation split; None where not recorded."""
        config = self.training_config
        fraction, seed = config.get("val_fraction"), config.get("seed")
        return (self.training_data, None if fraction is None else float(fraction),
                None if seed is None else int(seed))

    @property
    def min_sensitivity(self) -> float:
        """The validation sensitivity the threshold rule kept (the default rule when not recorded)."""
        return float(self.training_config.get("min_sensitivity", DEFAULT_MIN_SENSITIVITY))

    @property
    def validation_roc_auc(self) -> float | None:
        auc = (self.validation_metrics or {}).get("roc_auc")
        return None if auc is None else float(auc)

    @property
    def test_metrics(self) -> Mapping[str, Any] | None:
        """The figures `evaluate --update-card` recorded on the test split (None until then)."""
        figures = self.extra.get("test_metrics")
        return figures if isinstance(figures, Mapping) else None

    @property
    def domain(self) -> Mapping[str, Any] | None:
        """The domain gate's record (``models.domain``: threshold, validated age bands, shares marked), if fitted."""
        record = self.extra.get("domain")
        return record if isinstance(record, Mapping) else None

    def with_domain(self, record: Mapping[str, Any]) -> ModelCard:
        """This card with the domain gate's record set."""
        return replace(self, extra={**self.extra, "domain": _plain(record)})

    def with_test_metrics(self, figures: Mapping[str, Any]) -> ModelCard:
        """This card with ``figures`` recorded as its test metrics."""
        return replace(self, extra={**self.extra, "test_metrics": _plain(figures)})


_FIELD_KEYS = frozenset(f.name for f in fields(ModelCard)) - {"extra", "null_keys"}
