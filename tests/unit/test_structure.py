"""The shape of the code that issue 26 asks to keep: small modules and one vocabulary.

The layer contract itself is import-linter's (`lint-imports`, configured in pyproject.toml), run by .ci/run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pneumoscan.domain import Label, Role, Status

SRC = Path(__file__).resolve().parents[2] / "src" / "pneumoscan"
MAX_LINES = 500
MAX_BARE_LITERALS = 3


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, nodes) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def bare_vocabulary_literals(source: str) -> list[tuple[int, str]]:
    """Each string constant in ``source`` that spells a status, label or role by hand instead of its enum."""
    vocabulary = {member.value for enum in (Status, Label, Role) for member in enum}
    tree = ast.parse(source)
    docs = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and node.value in vocabulary and id(node) not in docs
    ]


def test_no_source_file_is_over_500_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_statuses_labels_and_roles_are_spelled_through_the_domain_enums() -> None:
    hits = [
        f"{p.relative_to(SRC)}:{line}: {value!r}"
        for p in _sources() if p.name != "domain.py"
        for line, value in bare_vocabulary_literals(p.read_text(encoding="utf-8"))
    ]
    assert len(hits) <= MAX_BARE_LITERALS, "\n".join(hits)


def test_the_literal_check_sees_bare_values_but_not_enums_or_docstrings() -> None:
    source = '"""Done."""\nfrom x import Status\nA = Status.REJECTED\nB = "rejected"\nC = ("PNEUMONIA", "admin")\n'
    assert bare_vocabulary_literals(source) == [(4, "rejected"), (5, "PNEUMONIA"), (5, "admin")]
