"""The web app's shape: route modules never import one another, and web/ holds no SQL (db/ does)."""

from __future__ import annotations

import ast
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "src" / "pneumoscan" / "web"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of each import in ``path``, lazy ones inside functions too."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def test_route_modules_never_import_one_another_nor_the_app() -> None:
    routes = sorted((WEB / "routes").glob("*.py"))
    assert len(routes) > 5
    for path in routes:
        if path.name == "__init__.py":
            continue
        for module, names in _imports(path):
            assert not module.startswith(("pneumoscan.web.routes", "pneumoscan.web.app")), (path.name, module)
            assert not (module == "pneumoscan.web" and {"routes", "app"} & set(names)), (path.name, module)
    for module, _ in _imports(WEB / "deps.py"):
        assert not module.startswith(("pneumoscan.web.routes", "pneumoscan.web.app")), module


def test_the_web_app_builds_no_sql_and_never_imports_the_worker() -> None:
    for path in sorted(WEB.rglob("*.py")):
        for module, names in _imports(path):
            where = f"{path.relative_to(WEB)}: {module} {names}"
            assert not module.startswith("sqlalchemy") or module == "sqlalchemy.exc", where
            assert module != "pneumoscan.db.schema" or set(names) <= {"utcnow"}, where
            assert not module.startswith(("pneumoscan.worker", "pneumoscan.scheduler", "pneumoscan.cli")), where
