"""Open the index database, migrating its schema to this lanshare's Alembic head first.

Call :func:`open_index` before the event loop starts (or in a worker thread): migrating and
backing up are blocking work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

import lanshare
from lanshare.errors import Error

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

# A migration's own revision and the one it follows, as the files in migrations/versions spell them.
_REVISION_LINE = re.compile(
    r"""^(down_revision|revision)(?:: *[\w |]+)? *= *(?:"([\w.-]+)"|'([\w.-]+)'|None) *$""", re.M
)

# How long an SQLite statement waits for another process's lock before failing.
BUSY_TIMEOUT_MS = 10_000

# Execution option naming the SQLite BEGIN mode ("DEFERRED", "IMMEDIATE", "EXCLUSIVE") for a
# connection; see _configure_sqlite.
SQLITE_BEGIN = "lanshare_sqlite_begin"


# The PostgreSQL advisory lock key that serialises migrations ("lanshare" in ASCII, as an integer).
_MIGRATION_LOCK = int.from_bytes(b"lanshare", "big") & 0x7FFF_FFFF_FFFF_FFFF


class IndexDatabaseError(Error):
    """The index database cannot be opened or its schema cannot be migrated."""


class SchemaTooNewError(IndexDatabaseError):
    """The database carries a schema revision this lanshare does not know: a newer one wrote it."""


def writer(engine: Engine) -> Engine:
    """The engine for a read-then-write transaction.

    On SQLite, BEGIN IMMEDIATE takes the write lock before the first read, so a concurrent writer
    makes it wait (the busy timeout) instead of failing at once with "database is locked", which
    a deferred transaction that read an older snapshot gets in WAL mode.
    """
    return engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})


def script_location() -> Path:
    """The directory of the Alembic migrations shipped with this lanshare."""
    # Installed (wheel or editable), the top-level migrations/ is the package lanshare.migrations.
    spec = importlib.util.find_spec("lanshare.migrations")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations)))
    else:
        # A source checkout used without installing: migrations/ sits beside the package.
        path = Path(lanshare.__file__).resolve().parent.parent / "migrations"
    if not (path / "env.py").is_file():
        raise IndexDatabaseError(f"lanshare's database migrations are missing (looked in {path})")
    return path


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic Config for lanshare's migrations, run on ``connection`` or on ``url``."""
    from alembic.config import Config

    cfg = Config()

    # Config values go through ConfigParser interpolation, so a literal % must be doubled.
    def escape(value: str) -> str:
        return value.replace("%", "%%")

    cfg.set_main_option("script_location", escape(str(script_location())))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", escape(url))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The schema revision this lanshare migrates to."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise IndexDatabaseError(f"lanshare's migrations have {len(heads)} heads, expected one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with lanshare's SQLite settings; the schema is left alone."""
    try:
        sa_url = make_url(url)
        engine = create_engine(sa_url)
    except (ArgumentError, ImportError, ValueError) as e:
        raise IndexDatabaseError(f"cannot use database URL {_redact(url)}: {e}") from e
    if sa_url.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    return engine


def open_index(url: str) -> Engine:
    """Open the index database at ``url``, migrated to this lanshare's schema."""
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        try:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IndexDatabaseError(
                f"cannot create the directory of index database {sqlite_file}: {e}"
            ) from e
    engine = make_engine(url)
    try:
        _migrate(engine, sqlite_file)
    except SQLAlchemyError as e:
        engine.dispose()
        reason = getattr(e, "orig", None) or e
        raise IndexDatabaseError(f"cannot open index database {_redact(url)}: {reason}") from e
    except BaseException:
        engine.dispose()
        raise
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on the index; objects stay readable after commit."""
    # Without expire_on_commit=False, reading a committed object (say, to render the status
    # page) would silently reload it, possibly from another thread.
    return sessionmaker(engine, expire_on_commit=False)


def quick_head() -> str | None:
    """The head revision read straight from the migration files, without Alembic; None when a
    file is not the plain one-parent kind this can read (then Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((script_location() / "versions").glob("*.py")):
        found = dict((m[0], m[1] or m[2] or None) for m in _REVISION_LINE.findall(path.read_text()))
        if found.get("revision") is None or "down_revision" not in found:
            return None
        revisions.add(cast(str, found["revision"]))
        if found["down_revision"] is not None:
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(engine: Engine) -> bool:
    """Whether the database is at this lanshare's head already: then opening it needs no
    Alembic, which is ~0.1 s of every short command's start-up.  Read without a lock."""
    try:
        head = quick_head()
    except OSError:
        return False
    if head is None:
        return False
    try:
        with engine.connect() as connection:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError:
        return False  # no version table yet (a new database): migrate
    return current == [head]


def _migrate(engine: Engine, sqlite_file: Path | None) -> None:
    if _at_head(engine):
        return
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    # BEGIN IMMEDIATE takes SQLite's write lock before the revision is read, so two processes
    # starting together migrate one after the other instead of both creating the same tables.
    with engine.connect() as connection:
        connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                # PostgreSQL's equivalent: a transaction-scoped lock every lanshare takes first.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            cfg = alembic_config(connection)
            script = ScriptDirectory.from_config(cfg)
            current = MigrationContext.configure(connection).get_current_heads()
            known = {rev.revision for rev in script.walk_revisions()}
            unknown = sorted(set(current) - known)
            if unknown:
                raise SchemaTooNewError(
                    f"index database {engine.url.render_as_string(hide_password=True)} is at schema revision "
                    f"{', '.join(unknown)}, which lanshare {lanshare.__version__} does not know "
                    f"(it knows up to {', '.join(script.get_heads())}): a newer lanshare wrote it. "
                    "Upgrade lanshare, or point database.url at a new database and run "
                    "`lanshare reindex`."
                )
            if set(current) == set(script.get_heads()):
                return
            if sqlite_file is not None and current:
                _backup_sqlite(sqlite_file, current)
            log.info("migrating index database from %s to head", ", ".join(current) or "empty")
            # The migrations run inside this transaction (Alembic joins it), so a failure leaves
            # the database at its old revision.
            command.upgrade(cfg, "head")


def _backup_sqlite(path: Path, revisions: Iterable[str]) -> Path:
    """Copy the SQLite database to ``<path>.bak-<revision>`` and return the copy's path."""
    tag = "+".join(sorted(revisions))
    target = path.with_name(f"{path.name}.bak-{tag}")
    # Never overwrite an earlier backup from the same revision: it may be the only good copy.
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.bak-{tag}.{n}")
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    # The backup API copies a consistent snapshot, WAL contents included, while our own
    # connection holds the write lock; copying the file could miss the WAL.
    with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(tmp)) as dst:
        src.backup(dst)
        # A rollback-journal copy is one self-contained file, safe to move or copy back.
        dst.execute("PRAGMA journal_mode = DELETE")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    log.info("backed up index database %s to %s before migrating it", path, target)
    return target


def _sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL, or None for another backend or an in-memory database."""
    try:
        sa_url: URL = make_url(url)
    except ArgumentError:
        return None
    database = sa_url.database
    if sa_url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    # URI filenames ("file:...?mode=...") are passed to SQLite as they are; not worth parsing.
    if sa_url.query.get("uri") in ("true", "1") or sa_url.query.get("mode") == "memory":
        return None
    return Path(database)


def _configure_sqlite(engine: Engine) -> None:
    """Make SQLite behave like a server database: WAL, foreign keys, waiting on locks."""
    pysqlite = engine.dialect.driver == "pysqlite"

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        if pysqlite:
            # Take BEGIN out of the sqlite3 module's hands (see on_begin): its legacy mode
            # starts transactions only before DML, so DDL and SAVEPOINTs escape them.
            cast(sqlite3.Connection, dbapi_connection).isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            # Readers (the HTTP server) never block the writer (a pull), and vice versa.
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode, NORMAL syncs at checkpoints rather than at every commit: a power cut
            # may lose the last transactions, never the database's consistency.  The index is
            # derived from the repository (`lanshare reindex`), and a commit's fsync was ~5-15 ms
            # of every pull's few transactions (start, split, finish, the commit's rows).
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    if pysqlite:

        @event.listens_for(engine, "begin")
        def on_begin(connection: Connection) -> None:
            mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
            if mode not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
                raise ValueError(f"{SQLITE_BEGIN}={mode!r}: expected DEFERRED, IMMEDIATE or EXCLUSIVE")
            connection.exec_driver_sql(f"BEGIN {mode}")


def _redact(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"
