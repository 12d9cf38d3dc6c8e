"""`pneumoscan train`'s options are TrainConfig's fields: the same names and defaults, said once, in the recipe."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest

from pneumoscan.cli import main
from pneumoscan.models.recipe import TrainConfig

NOT_OPTIONS = {"weight_decay"}  # recipe fields that train deliberately does not ask for
COMMAND_OWN = {"data_dir", "out", "restart"}  # train's parameters that are not recipe fields


def _train() -> click.Command:
    command = main.commands["train"]
    assert isinstance(command, click.Command)
    return command


def _parsed(tmp_path: Path, *args: str) -> TrainConfig:
    """The TrainConfig that `pneumoscan train DATA --out OUT ARGS` builds, parsed by click as a user's line is."""
    from pneumoscan.cli.models import _recipe

    ctx = _train().make_context("train", [str(tmp_path), "--out", str(tmp_path / "out"), *args])
    return _recipe({k: v for k, v in ctx.params.items() if k not in COMMAND_OWN})


def test_every_recipe_field_is_an_option_or_deliberately_not() -> None:
    options = {p.name for p in _train().params} - COMMAND_OWN
    assert options == {f.name for f in dataclasses.fields(TrainConfig)} - NOT_OPTIONS


def test_the_default_options_make_the_default_config(tmp_path: Path) -> None:
    assert _parsed(tmp_path) == TrainConfig()


def test_the_defaults_shown_in_help_are_the_config_defaults() -> None:
    ctx = click.Context(_train(), info_name="train")
    shown = 0
    for param in _train().params:
        if not isinstance(param, click.Option) or param.name in COMMAND_OWN:
            continue
        default = getattr(TrainConfig(), param.name or "")
        record = param.get_help_record(ctx)
        assert record is not None
        if isinstance(default, bool) or (default is None and param.name != "weights"):
            assert "  [default:" not in record[1], record  # click's own, after two spaces
            continue
        expected = "none" if default is None else str(default)
        assert re.search(rf"\[default: {re.escape(expected)}[;\]]", record[1]), record
        shown += 1
    assert shown >= 15


@pytest.mark.parametrize(("args", "changed"), [
    (["--no-augment"], {"augment": False}),
    (["--freeze-bn", "--equalize"], {"freeze_bn": True, "equalize": True}),
    (["--weights", "imagenet"], {"weights": "imagenet"}),
    (["--weights", "none"], {}),
    (["--architecture", "TINY", "--input-size", "64"], {"architecture": "tiny", "input_size": 64}),
    (["--train-seed", "3", "--version", "v1", "--epochs", "2"], {"train_seed": 3, "version": "v1", "epochs": 2}),
    (["--learning-rate", "0.01", "--ema", "0.99", "--resample", "0.2"],
     {"learning_rate": 0.01, "ema": 0.99, "resample": 0.2}),
])
def test_options_set_their_fields(tmp_path: Path, args: list[str], changed: dict[str, object]) -> None:
    assert _parsed(tmp_path, *args) == dataclasses.replace(TrainConfig(), **changed)


def test_init_is_a_bundle_folder_stored_as_text(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    assert _parsed(tmp_path, "--init", str(tmp_path / "bundle")).init == str(tmp_path / "bundle")
    with pytest.raises(click.BadParameter):
        _parsed(tmp_path, "--init", str(tmp_path / "missing"))
