"""Alembic migrations: one head, applied at start, reversible, backed up, and shipped in the wheel."""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import lanshare.index.db
from lanshare.errors import Error
from lanshare.index.db import (
    SchemaTooNewError,
    alembic_config,
    current_revision,
    head_revision,
    open_index,
    quick_head,
    script_location,
    session_factory,
)
from lanshare.index.models import Base, Commit, Peer, Pin, PinSource, Ref

INDEX_TABLES = {"commits", "refs", "pins", "leases", "peers", "transfers"}
C1 = "a" * 64
C2 = "b" * 64
SHIPPED = head_revision()
ROOT = Path(__file__).resolve().parent.parent

# The newest shipped revision, and a next one that exists only in these tests: backups and
# one-step round trips need an older revision to start from.  It alters a table that
# holds data, in batch mode, which on SQLite recreates the table both ways.
REVISION_0002 = '''
"""Test only: a column and an index on commits.

Revision ID: test_next
Revises: SHIPPED_HEAD
"""

import sqlalchemy as sa
from alembic import op

revision = "test_next"
down_revision = "SHIPPED_HEAD"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("commits") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch.create_index("ix_commits_note", ["note"])


def downgrade() -> None:
    with op.batch_alter_table("commits") as batch:
        batch.drop_index("ix_commits_note")
        batch.drop_column("note")
'''

# A revision that fails halfway, after it has changed the schema.
FAILING_0002 = '''
"""Test only: fails after creating a table.

Revision ID: test_next
Revises: SHIPPED_HEAD
"""

import sqlalchemy as sa
from alembic import op

revision = "test_next"
down_revision = "SHIPPED_HEAD"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    op.drop_index("ix_commits_parent", table_name="commits")
    raise RuntimeError("migration 0002 failed on purpose")


def downgrade() -> None:
    op.drop_table("half_done")
'''


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def with_revision_0002(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    """Make open_index see the shipped migrations plus a test-only next revision."""
    scripts = tmp_path / "migrations"
    shutil.copytree(script_location(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "test_next.py").write_text(source.replace("SHIPPED_HEAD", SHIPPED))
    monkeypatch.setattr(lanshare.index.db, "script_location", lambda: scripts)


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "index.db"


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """The index on each backend: SQLite, and a live PostgreSQL (tests/postgres.py)."""
    engine = open_index(database_url)
    yield engine
    engine.dispose()


def add_rows(engine: sa.Engine) -> None:
    with session_factory(engine)() as session:
        session.add_all(
            [
                Commit(checksum=C1, ref="os/stable", timestamp=100, is_checkpoint=True),
                Ref(name="os/stable", commit=C1),
                Pin(ref_glob="os/*", source=PinSource.CONFIG),
                Peer(node_id="n1", addresses=["192.0.2.1"], port=1, holdings={"os/stable": C1}),
            ]
        )
        session.commit()


def test_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1
    assert head_revision() == script.get_heads()[0]
    # Every revision reaches the base, and each one can be undone.
    revisions = list(script.walk_revisions())
    assert revisions[-1].down_revision is None
    for rev in revisions:
        assert rev.module.downgrade.__doc__, f"{rev.revision} has no documented downgrade"


def test_empty_database_is_migrated_to_head_at_open(engine: sa.Engine) -> None:
    assert tables(engine) == INDEX_TABLES | {"alembic_version"}
    assert current_revision(engine) == head_revision()


def same_empty_default(
    context: MigrationContext,
    inspected_column: sa.Column[Any],
    metadata_column: sa.Column[Any],
    inspected_default: str | None,
    metadata_default: object,
    rendered_metadata_default: str | None,
) -> bool | None:
    """Compare server defaults as Alembic does, except that '' equals ''."""
    # Alembic's SQLite comparison unwraps every default but the empty string: "('')" vs "''".
    if inspected_default in ("''", "('')") and rendered_metadata_default in ("", "''"):
        return False
    return None


def test_models_match_the_migrations(engine: sa.Engine) -> None:
    # What the migrations build and what the models describe must not drift apart.
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": same_empty_default}
        )
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_to_base_and_up_again(engine: sa.Engine) -> None:
    add_rows(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    # The initial revision's downgrade drops the index: it is rebuilt from the repository.
    assert tables(engine) == {"alembic_version"}
    assert current_revision(engine) is None

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    assert tables(engine) == INDEX_TABLES | {"alembic_version"}
    add_rows(engine)
    with session_factory(engine)() as session:
        assert session.get_one(Peer, "n1").holdings == {"os/stable": C1}


def test_one_step_round_trip_keeps_data(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_revision_0002(tmp_path, monkeypatch, REVISION_0002)
    engine = open_index(database_url)
    assert current_revision(engine) == "test_next"
    add_rows(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE commits SET note = 'kept'"))

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "-1")
    assert current_revision(engine) == SHIPPED
    assert "note" not in {c["name"] for c in sa.inspect(engine).get_columns("commits")}
    with session_factory(engine)() as session:
        commit = session.get_one(Commit, C1)
        assert (commit.ref, commit.is_checkpoint) == ("os/stable", True)
        assert session.get_one(Ref, ("os/stable", "")).commit == C1

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
        assert conn.execute(sa.text("SELECT checksum, note FROM commits")).all() == [(C1, None)]
        conn.execute(sa.text("UPDATE commits SET note = 'again'"))
    engine.dispose()


def test_sqlite_is_backed_up_before_an_upgrade(
    tmp_path: Path, db_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = open_index(sqlite_url(db_file))
    add_rows(old)
    old.dispose()
    # A fresh database has nothing worth a backup.
    assert list(tmp_path.glob("index.db.bak-*")) == []

    with_revision_0002(tmp_path, monkeypatch, REVISION_0002)
    new = open_index(sqlite_url(db_file))
    assert current_revision(new) == "test_next"
    new.dispose()

    backup = tmp_path / f"index.db.bak-{SHIPPED}"
    assert [p.name for p in tmp_path.glob("index.db.bak-*")] == [backup.name]
    with closing(sqlite3.connect(backup)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(SHIPPED,)]
        assert conn.execute("SELECT checksum FROM commits").fetchall() == [(C1,)]
        # One self-contained file, whatever the live database's journal mode.
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)

    # Opening at the same revision again changes nothing, so it makes no new backup.
    open_index(sqlite_url(db_file)).dispose()
    assert len(list(tmp_path.glob("index.db.bak-*"))) == 1


def test_failed_upgrade_leaves_the_database_as_it_was(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = open_index(database_url)
    add_rows(old)
    old.dispose()

    with_revision_0002(tmp_path, monkeypatch, FAILING_0002)
    with pytest.raises(RuntimeError, match="on purpose"):
        open_index(database_url)

    monkeypatch.undo()
    engine = open_index(database_url)
    assert current_revision(engine) == SHIPPED
    assert tables(engine) == INDEX_TABLES | {"alembic_version"}
    assert "ix_commits_parent" in {ix["name"] for ix in sa.inspect(engine).get_indexes("commits")}
    with session_factory(engine)() as session:
        assert session.get_one(Commit, C1).ref == "os/stable"
    engine.dispose()


def test_database_from_a_newer_lanshare_is_refused(db_file: Path) -> None:
    engine = open_index(sqlite_url(db_file))
    add_rows(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    before = db_file.read_bytes()

    with pytest.raises(SchemaTooNewError) as info:
        open_index(sqlite_url(db_file))
    message = str(info.value)
    assert "schema revision 9999" in message
    assert "newer lanshare" in message
    assert head_revision() in message
    assert isinstance(info.value, Error)
    # Refused means untouched: no backup, no migration.
    assert list(db_file.parent.glob("index.db.bak-*")) == []
    assert db_file.read_bytes() == before


def test_migrations_render_for_postgresql() -> None:
    # No server here: render the SQL offline, which fails on anything PostgreSQL cannot express.
    cfg = alembic_config(url="postgresql://lanshare@db.invalid/lanshare")
    cfg.output_buffer = buf = io.StringIO()
    command.upgrade(cfg, "head", sql=True)
    command.downgrade(cfg, f"{head_revision()}:base", sql=True)
    sql = buf.getvalue()
    for table in INDEX_TABLES:
        assert f"CREATE TABLE {table} (" in sql
        assert f"DROP TABLE {table};" in sql
    assert "TIMESTAMP WITH TIME ZONE" in sql


def build_wheel(out: Path) -> Path:
    """Build lanshare's wheel from a copy of the sources, so the work tree gets no build/ litter."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "lanshare", src / "lanshare", ignore=ignore)
    shutil.copytree(ROOT / "migrations", src / "migrations", ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out / "dist"), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = (out / "dist").glob("lanshare-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_ships_every_module_and_the_migrations(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    # Every module of the source tree is in the wheel (a subpackage missing from pyproject's
    # package list would work in a checkout and fail once installed).
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "lanshare").rglob("*.py")}
    sources = {p for p in sources if not p.startswith("lanshare/migrations/")}
    assert sources - shipped == set()
    env_dir = tmp_path / "venv"
    # System site-packages supply SQLAlchemy and Alembic; lanshare itself must come from the wheel.
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    snippet = textwrap.dedent(
        """
        import sys
        import sqlalchemy as sa
        import lanshare
        from lanshare.index.db import open_index, script_location

        engine = open_index("sqlite:///" + sys.argv[1])
        print(lanshare.__file__)
        print(script_location())
        print(",".join(sorted(sa.inspect(engine).get_table_names())))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = subprocess.run(
        [str(python), "-c", snippet, str(tmp_path / "fresh.db")],
        cwd=tmp_path,  # not the work tree, whose lanshare/ would shadow the installed one
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    package, scripts, names = out.stdout.splitlines()
    assert Path(package).is_relative_to(env_dir), package
    assert Path(scripts).is_relative_to(env_dir), scripts
    assert set(names.split(",")) == INDEX_TABLES | {"alembic_version"}
    assert (Path(scripts) / "versions" / "0001_initial.py").is_file()


def test_quick_head_is_alembic_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_index skips Alembic for a database at the head read from the files: it must be Alembic's."""
    assert quick_head() == head_revision()
    # A migration this reader cannot follow (a merge of two heads) leaves the decision to Alembic.
    with_revision_0002(tmp_path, monkeypatch, REVISION_0002)
    assert quick_head() == head_revision() == "test_next"
    (tmp_path / "migrations" / "versions" / "merge.py").write_text(
        'revision = "merged"\ndown_revision = ("test_next", "other")\n'
    )
    assert quick_head() is None


def test_a_current_database_opens_without_importing_alembic(tmp_path: Path) -> None:
    """Alembic is start-up time every short command pays: only a database needing migration loads it."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    probe = (
        "import sys; from lanshare.index.db import open_index, current_revision; "
        f"e = open_index({url!r}); loaded = 'alembic' in sys.modules; "
        "print(loaded, current_revision(e))"
    )

    def run() -> list[str]:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run() == ["True", SHIPPED]  # a new database: migrated, so Alembic was needed
    assert run() == ["False", SHIPPED]  # already at head: opened without it
