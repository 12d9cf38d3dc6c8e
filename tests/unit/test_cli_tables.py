"""`results` in a terminal: the table fits 80 columns, paths cut from the left so that file names stay."""

from __future__ import annotations

from rich.console import Console

from pneumoscan.cli.tables import cut, fitted_table
from pneumoscan.db.results import RESULT_FIELDS
from pneumoscan.db.studies import STUDY_FIELDS
from pneumoscan.domain import Label, Status

LONG = "/srv/pacs/inbox/2026-12/ward-7-east/patient-000042/series-3/chest-pa-{}.png"


def _rows(n: int = 5) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i in range(n):
        done = i % 2 == 0
        rows.append({key: None for key in RESULT_FIELDS} | {
            "id": 1000 + i, "path": LONG.format(i), "paths": 1, "status": Status.DONE if done else Status.REJECTED,
            "label": Label.PNEUMONIA if done else None, "probability": 0.8731 if done else None,
            "model_version": "pneumonet-v11" if done else None,
            "classified_at": "2026-12-06T16:10:42+00:00" if done else None,
            "reason": None if done else "corrupt or truncated PNG: OSError: Truncated File Read after 4096 bytes"})
    return rows


def _render(rows: list[dict[str, object]], shown: tuple[str, ...], width: int) -> list[str]:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(fitted_table(rows, shown, width))
    console.file.close()
    return console.export_text().splitlines()


SHOWN = ("id", "path", "paths", "status", "label", "probability", "model_version", "classified_at", "review_label",
         "reason")


def test_results_fit_80_columns_one_line_a_row() -> None:
    lines = _render(_rows(), SHOWN, 80)
    assert max(map(len, lines)) <= 80
    assert len(lines) == 1 + 1 + 5  # the model version as a title, the header, one line per row
    assert lines[0].rstrip() == "model pneumonet-v11"
    for i, line in enumerate(lines[2:]):
        assert f"chest-pa-{i}.png" in line and line.lstrip().startswith(str(1000 + i))
    assert "PNEUMONIA" in lines[2] and "0.873" in lines[2] and "12-06 16:10" in lines[2]
    assert "rejected" in lines[3] and "corrupt or" in lines[3]


def test_a_wide_terminal_shows_everything_uncut() -> None:
    lines = _render(_rows(), SHOWN, 250)
    assert LONG.format(0) in lines[2]
    assert "corrupt or truncated PNG: OSError: Truncated File Read after 4096 bytes" in lines[3]


def test_studies_fit_80_columns() -> None:
    uid = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567"
    rows = [{key: None for key in STUDY_FIELDS} | {
        "study_uid": uid + str(i), "status": "complete", "instance_count": 3, "assessed_count": 2,
        "label": Label.NORMAL, "probability": 0.12, "completed_at": "2026-12-06T16:10:42+00:00", "send_state": "sent"}
        for i in range(3)]
    shown = ("study_uid", "status", "instance_count", "assessed_count", "label", "probability", "completed_at",
             "send_state")
    lines = _render(rows, shown, 80)
    assert max(map(len, lines)) <= 80
    assert all(line.lstrip().startswith("…") and f"567{i}" in line for i, line in enumerate(lines[1:]))


def test_cut() -> None:
    assert cut("/a/b/c.png", 20, left=True) == "/a/b/c.png"
    assert cut("/a/b/c.png", 6, left=True) == "…c.png"
    assert cut("corrupt file", 8, left=False) == "corrupt…"
