"""Database stage: engine and sessions, schema, Alembic migrations and query functions (no TensorFlow)."""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Key of the PostgreSQL advisory lock that serializes migrations ("pneumo" in ASCII).
_MIGRATION_LOCK = 0x706E65756D6F


class DatabaseError(Exception):
    """The database cannot be opened or migrated; the message says which URL and why."""


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # WAL lets `results` read while a scan writes; busy_timeout rides out short write locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Paths match case-sensitively, as in PostgreSQL, and a `--path` glob with a fixed prefix then reads
    # the path indexes instead of every row (SQLite's LIKE optimization needs this).
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


def _create_private(path: Path) -> None:
    """Create a SQLite file readable by its owner only (0600): it holds password and token hashes and reviews.

    SQLite gives its -wal and -shm files the database file's own mode, so they are private too.
    An existing file keeps the mode its owner gave it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
    os.chmod(path, 0o600)  # whatever the umask


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder created and sensible pragmas."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        _create_private(Path(url.removeprefix("sqlite:///")).expanduser())
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except ArgumentError:
        shown = url.rpartition("@")[2]  # never a password
        raise DatabaseError(f"{shown!r} is not a database URL; use postgresql+psycopg://USER@HOST/NAME or "
                            "sqlite:////absolute/path.db") from None
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"pneumoscan supports PostgreSQL and SQLite databases, not {url.split(':')[0]!r} "
                            f"({exc})") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` on ``engine``'s database."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as connection:
            if sqlite:
                # SQLite changes a constraint by copying the table and dropping the old one; with
                # foreign keys on, that drop would cascade to every prediction and review. The pragma
                # only takes effect outside a transaction, so it comes before the migration's.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()  # end SQLAlchemy's autobegun (empty) transaction
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    # Workers that start together would otherwise race to create the same tables; the
                    # lock is held until this transaction commits, and the loser then finds nothing to do.
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise DatabaseError("a migration left rows whose image is missing; nothing was changed")
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate {engine.url.render_as_string(hide_password=True)}: {exc}") from exc


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at; None for a database without the schema."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read {engine.url.render_as_string(hide_password=True)}: {exc}") from exc


# Tables whose statistics the results query depends on.
_ANALYZED = ("images", "predictions")
# Rows sampled per index by SQLite's approximate ANALYZE: milliseconds at any size, and close enough
# for the planner to tell a status from a label.
_ANALYSIS_LIMIT = 1000


def refresh_statistics(connection: Connection) -> bool:
    """SQLite: gather planner statistics if an index has none or a table has doubled since; say if it did.

    SQLite never gathers statistics by itself, and without them it may read every row that a common
    label matches and sort them, where reading the newest images first stops at the limit.
    PostgreSQL's autovacuum keeps its own statistics, so this does nothing there. Called on every
    open: the check is two index lookups per table.
    """
    if connection.dialect.name != "sqlite":
        return False
    has_stat1 = connection.execute(
        text("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'")).scalar_one()
    stale = []
    for table in _ANALYZED:
        rows = connection.execute(text(f"SELECT max(rowid) FROM {table}")).scalar()
        if not rows:
            continue
        indexes = set(connection.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"), {"t": table}).scalars())
        stats: dict[str, str] = {}
        if has_stat1:
            rows_of = connection.execute(text("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = :t"), {"t": table})
            stats = {str(idx): str(stat) for idx, stat in rows_of}
        counted = max((int(stat.split()[0]) for stat in stats.values()), default=0)
        if indexes - stats.keys() or rows > 2 * counted:
            stale.append(table)
    if stale:
        connection.exec_driver_sql(f"PRAGMA analysis_limit={_ANALYSIS_LIMIT}")
        for table in stale:
            connection.exec_driver_sql(f"ANALYZE {table}")
        connection.exec_driver_sql("PRAGMA analysis_limit=0")
        log.info("gathered planner statistics for %s", ", ".join(stale))
    return bool(stale)


class Database:
    """One database: its engine and its sessions, the handle that every stage is given.

    ``db()`` opens a session for reading, ``db.begin()`` one transaction; ``dispose`` drops the
    connection pool (``close=False`` in a forked child, so the parent's sockets stay open).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def __call__(self) -> Session:
        return self._sessions()

    def begin(self) -> AbstractContextManager[Session]:
        """A session in a transaction that commits when the block ends (and rolls back on an error)."""
        return self._sessions.begin()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self, *, close: bool = True) -> None:
        self.engine.dispose(close=close)


def reach(engine: Engine) -> None:
    """Connect once, so that a database that is down or refuses us is said in one line, before any migration."""
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        problem = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseError(f"cannot reach the database {engine.url.render_as_string(hide_password=True)}: "
                            f"{problem}") from None


def open_database(url: str) -> Database:
    """Connect to ``url``, bring its schema up to date, refresh SQLite's planner statistics if stale."""
    engine = make_engine(url)
    reach(engine)
    upgrade(engine)
    if engine.dialect.name == "sqlite":
        try:
            with engine.begin() as connection:
                refresh_statistics(connection)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot open {engine.url.render_as_string(hide_password=True)}: {exc}") from exc
    return Database(engine)
