"""The CLI turns the errors a user can fix into one line, and keeps the traceback of everything else (our bugs)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from pneumoscan.cli._common import _friendly
from pneumoscan.db import DatabaseError
from pneumoscan.db.users import UserError
from pneumoscan.models.card import BundleError
from pneumoscan.models.dataset import DatasetError
from pneumoscan.models.recipe import RecipeError


def _raising(exc: BaseException) -> click.Command:
    @click.command()
    @_friendly
    def command() -> None:
        raise exc

    return command


@pytest.mark.parametrize("exc", [
    UserError("user ada already exists"),
    DatabaseError("cannot open sqlite:///x.db: disk I/O error"),
    BundleError("model card /m/card.json is unreadable"),
    DatasetError("/d must contain the folders NORMAL and PNEUMONIA"),
    RecipeError("tiny needs --input-size of at least 16 px"),
    NotADirectoryError("inbox /in is not a folder"),
    PermissionError(13, "Permission denied", "/data/pneumoscan.db"),
])
def test_expected_errors_are_one_line(exc: Exception) -> None:
    result = CliRunner().invoke(_raising(exc))
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {exc}\n"
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("exc", [
    ValueError("operands could not be broadcast together"),  # a bug of ours, not the user's input
    KeyError("roc_auc"),
    ConnectionRefusedError(111, "Connection refused"),  # an OSError that names no file the user gave
    RuntimeError("the patient salt was not resolved"),
])
def test_unexpected_errors_keep_their_traceback(exc: Exception) -> None:
    result = CliRunner().invoke(_raising(exc))
    assert result.exception is exc and result.exc_info is not None
    assert "Error:" not in result.output


def test_usage_errors_stay_clicks() -> None:
    result = CliRunner().invoke(_raising(click.UsageError("say what to fit on")))
    assert result.exit_code == 2 and "Error: say what to fit on" in result.output
