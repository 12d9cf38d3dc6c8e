"""The database as `pneumoscan doctor` sees it: reachable, and at which migration, read without changing anything."""

from __future__ import annotations

from dataclasses import dataclass

from pneumoscan.db import MIGRATIONS, DatabaseError, current_revision, make_engine, reach


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands: its revision (None before the first migration) and the code's head."""

    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def head_revision() -> str:
    """The newest migration this code ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    if head is None:
        raise DatabaseError("no migrations found")
    return head


def schema_state(url: str) -> SchemaState:
    """Connect to ``url`` (``DatabaseError`` in one line when it cannot be reached) and read its revision."""
    engine = make_engine(url)
    try:
        reach(engine)
        return SchemaState(current_revision(engine), head_revision())
    finally:
        engine.dispose()
