"""The CLI's tables for a terminal: rows fitted to its width (80 columns and up), long paths cut from the left."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

# Short headers, so that the columns that matter keep their room.
HEADERS = {"probability": "prob.", "classified_at": "classified", "review_label": "review", "model_version": "model",
           "instance_count": "inst.", "assessed_count": "assessed", "completed_at": "completed", "send_state": "sent",
           "paths": "copies", "study_uid": "study", "status": "result", "last_send_error": "why not sent"}
# Told apart by their ends (a file name, a UID's last digits): cut from the left. Other long text from the right.
LEFT_CUT = frozenset({"path", "study_uid"})
FLEXIBLE = LEFT_CUT | {"reason", "last_send_error"}
_SEPARATOR = 2  # between two columns, at padding (0, 1) and no box
_FLEX_MIN = 12


def cell_text(key: str, value: Any) -> str:
    """One value as a terminal cell: probabilities to 3 places, times as MM-DD HH:MM (the full ISO time is in
    --format csv or json)."""
    if value is None:
        return ""
    if key == "probability":
        return f"{value:.3f}"
    if key.endswith("_at") and isinstance(value, str) and len(value) >= 16 and value[10] == "T":
        return f"{value[5:10]} {value[11:16]}"
    return str(value)


def cut(text: str, width: int, *, left: bool) -> str:
    """``text`` in at most ``width`` characters, an ellipsis where it was cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    return "…" + text[-(width - 1):] if left else text[:width - 1] + "…"


def fitted_table(rows: Sequence[dict[str, Any]], shown: Sequence[str], width: int) -> Table:
    """A table of ``rows`` that fits ``width`` columns: empty columns (and copies when each row has one, a single
    model version) left out, short columns at their natural width, the rest shared by paths, UIDs and reasons."""
    texts = {key: [cell_text(key, row.get(key)) for row in rows] for key in shown}
    if "status" in texts and "label" in texts:  # one column: the label of a classified image, else its status
        texts["status"] = [label or status for status, label in zip(texts["status"], texts.pop("label"), strict=True)]
        shown = [key for key in shown if key != "label"]
    title = None
    versions = set(texts.get("model_version", ())) - {""}
    if len(versions) == 1 and rows:
        title = f"model {versions.pop()}"
    keys = [key for key in shown if _kept(key, texts[key], title is not None)]
    natural = {key: max([len(HEADERS.get(key, key)), *map(len, texts[key])]) for key in keys}
    widths = _shares(natural, width - _SEPARATOR * (len(keys) - 1))
    table = Table(box=None, padding=(0, 1), pad_edge=False, title=title, title_justify="left", title_style="dim",
                  header_style="bold underline")
    for key in keys:
        table.add_column(HEADERS.get(key, key), no_wrap=True, width=widths[key], overflow="ellipsis",
                         justify="right" if key in ("id", "probability") else "left")
    for i in range(len(rows)):
        table.add_row(*(cut(texts[key][i], widths[key], left=key in LEFT_CUT) for key in keys))
    return table


def _kept(key: str, values: list[str], version_in_title: bool) -> bool:
    if key in ("id", "path", "study_uid", "status"):
        return True
    if key == "model_version" and version_in_title:
        return False
    if key == "paths" and all(v in ("", "1") for v in values):
        return False
    return any(values)


def _shares(natural: dict[str, int], budget: int) -> dict[str, int]:
    """Each column's width: the fixed ones as they are; paths, UIDs and reasons share what is left, a path or a
    UID first (up to 60 percent), never below a dozen characters (a narrower terminal wraps, as it would anyway)."""
    widths = dict(natural)
    flexible = [key for key in natural if key in FLEXIBLE]
    left = budget - sum(width for key, width in natural.items() if key not in FLEXIBLE)
    if not flexible or sum(natural[key] for key in flexible) <= left:
        return widths
    if len(flexible) == 1:
        widths[flexible[0]] = max(_FLEX_MIN, left)
        return widths
    first, rest = flexible[0], flexible[1:]
    widths[first] = max(_FLEX_MIN, min(natural[first], left - _FLEX_MIN * len(rest), int(left * 0.6)))
    remaining = left - widths[first]
    for key in rest:
        widths[key] = max(_FLEX_MIN, min(natural[key], remaining // len(rest)))
    return widths
