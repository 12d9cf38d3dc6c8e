"""Model cards: the shipped card's round trip, what a bad card says, derived cards and values."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pneumoscan.config import SHIPPED_MODEL_DIR
from pneumoscan.models.bundle import CARD_FILE, BundleError, load_bundle, read_card, write_card
from pneumoscan.models.card import Calibration, ModelCard
from pneumoscan.models.evaluate import store_test_metrics

SHIPPED_CARD = SHIPPED_MODEL_DIR / CARD_FILE


def test_the_shipped_card_round_trips_to_the_same_json() -> None:
    text = SHIPPED_CARD.read_text()
    data = json.loads(text)
    card = ModelCard.from_json(data)
    assert card.to_json() == data
    assert list(card.to_json()) == list(data)  # in the same key order,
    assert json.dumps(card.to_json(), indent=2) + "\n" == text  # so rewriting it changes no byte
    # Its typed fields and what is kept as it is.
    assert (card.version, card.architecture, card.input_size) == (data["version"], data["architecture"],
                                                                  data["input_size"])
    assert card.version.startswith("pneumonet-") and card.architecture.startswith("efficientnet-lite")
    assert card.labels == ("NORMAL", "PNEUMONIA") and card.warnings == ()
    assert card.calibration is not None and card.temperature == card.calibration.temperature == data[
        "calibration"]["temperature"]
    assert card.validation_split == ("chest_xray_224", 0.15, 0) and card.min_sensitivity == 0.97
    assert card.test_metrics == data["test_metrics"]
    assert {"previous_version", "selection", "speed", "known_limitations", "test_metrics"} <= set(card.extra)


def test_writing_a_card_read_from_disk_keeps_every_key(tmp_path: Path) -> None:
    data = {"version": "v1", "input_size": 32, "threshold": 0.25, "preprocessing": None, "note": {"a": [1, 2]},
            "test_metrics": None, "calibration": {"method": "temperature", "temperature": 2.0, "fitted_on": "x",
                                                  "before": {"nll": 1.0}, "after": {"nll": 0.5}, "seed": 3}}
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    card = read_card(tmp_path)
    assert card.preprocessing is None and card.temperature == 2.0 and card.test_metrics is None
    write_card(tmp_path, card)
    assert json.loads((tmp_path / CARD_FILE).read_text()) == data  # nulls and unknown keys included
    # A copy: changing what to_json gave, or the mapping read, leaves the card as it was.
    card.to_json()["note"]["a"].append(3)
    data["note"]["a"].append(4)
    assert card.extra["note"] == {"a": [1, 2]}


def test_a_minimal_card_writes_only_what_it_has() -> None:
    card = ModelCard(version="m", input_size=64, threshold=0.5)
    assert card.to_json() == {"version": "m", "input_size": 64, "threshold": 0.5}
    assert card.temperature == 1.0 and not card.is_ensemble and card.test_metrics is None
    assert card.validation_split == (None, None, None) and card.min_sensitivity == 0.97
    assert ModelCard.from_json(card.to_json()) == card


def test_derived_cards() -> None:
    card = ModelCard.from_json(json.loads(SHIPPED_CARD.read_text()))
    site = replace(card, threshold=0.3, calibration=None)
    assert site.threshold == 0.3 and site.temperature == 1.0 and "calibration" not in site.to_json()
    assert site.extra == card.extra and card.threshold != 0.3  # the original is unchanged
    measured = card.with_test_metrics({"n": 5, "accuracy": 0.8})
    assert measured.test_metrics == {"n": 5, "accuracy": 0.8} and measured.to_json()["speed"] == card.extra["speed"]
    with pytest.raises(ValueError, match="own fields"):
        ModelCard(version="x", input_size=1, threshold=0.5, extra={"threshold": 0.1})


def test_evaluate_records_test_metrics_in_the_card_and_keeps_the_rest(tiny_bundle: Any, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, copy)
    before = json.loads((copy / CARD_FILE).read_text())
    store_test_metrics(load_bundle(copy), {"n": 4, "accuracy": 0.75, "calibration": {"count": [1]}})
    after = json.loads((copy / CARD_FILE).read_text())
    assert after == {**before, "test_metrics": {"n": 4, "accuracy": 0.75}}
    assert load_bundle(copy, verify=True).card.test_metrics == {"n": 4, "accuracy": 0.75}


@pytest.mark.parametrize(("change", "message"), [
    ({"threshold": None}, "'threshold' must be a number in [0, 1], not null"),
    ({"threshold": 1.5}, "'threshold' must be a number in [0, 1], not a number"),
    ({"input_size": "224"}, "'input_size' must be a positive integer, not a string"),
    ({"input_size": True}, "'input_size' must be a positive integer, not a boolean"),
    ({"version": ""}, "'version' must be a non-empty string, not an empty string"),
    ({"labels": "NORMAL"}, "'labels' must be a list of strings, not a string"),
    ({"training": []}, "'training' must be an object, not a list"),
    ({"members": [1]}, "'members' must be a list of objects, not a list"),
    ({"calibration": {"temperature": 1.0}}, "the card's calibration is missing 'method', 'fitted_on'"),
    ({"calibration": {"method": "t", "temperature": -1, "fitted_on": "v", "before": {}, "after": {}}},
     "calibration 'temperature' must be positive"),
])
def test_a_bad_card_is_one_clear_line(change: dict[str, Any], message: str) -> None:
    data = {**json.loads(SHIPPED_CARD.read_text()), **change}
    with pytest.raises(BundleError) as info:
        ModelCard.from_json(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_card_missing_required_keys_names_them(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"^the card is missing 'input_size', 'threshold'$"):
        ModelCard.from_json({"version": "v"})
    with pytest.raises(BundleError, match="must be a JSON object, not a list"):
        ModelCard.from_json([])  # type: ignore[arg-type]
    (tmp_path / CARD_FILE).write_text(json.dumps({"version": "v", "input_size": 8}))
    with pytest.raises(BundleError, match=r"card\.json is unreadable or incomplete: the card is missing 'threshold'"):
        read_card(tmp_path)


def test_calibration_round_trips() -> None:
    entry = Calibration(method="temperature", temperature=0.5, fitted_on="validation", before={"nll": 0.2},
                        after={"nll": 0.1})
    assert Calibration.from_json(entry.to_json()) == entry
    assert replace(ModelCard("v", 8, 0.5), calibration=entry).temperature == 0.5
