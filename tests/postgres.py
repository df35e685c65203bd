"""A private PostgreSQL cluster for the index tests: Debian's ``postgresql``, started by the suite itself.

``initdb`` and ``pg_ctl`` run as the ``postgres`` user on a Unix socket in a temporary directory,
with TCP off (``listen_addresses=''``): nothing outside this machine's filesystem can reach it, and
no system service is involved.  Each test gets a fresh database.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.needs import missing, need_root

PG_BIN = Path("/usr/lib/postgresql")
# Only names the socket file in the cluster's own directory: TCP is off, so nothing can clash.
PORT = 5432


@dataclass
class PostgresServer:
    """A running cluster; :meth:`new_database` makes an empty database and returns its URL."""

    socket_dir: Path
    port: int
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3, over the socket)."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        import psycopg

        name = f"lanshare_test_{next(self._names)}"
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", autocommit=True
        ) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name}")
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _bin() -> Path:
    versions = sorted(PG_BIN.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        missing("PostgreSQL (Debian package postgresql) is not installed")
    return versions[-1].parent


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """Start a private cluster for the session (as the postgres user, so as root)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg is not installed (pip install 'lanshare[postgresql]')")
    need_root("starting PostgreSQL as the postgres user")
    binaries = _bin()
    # Not under pytest's 0700 tmp dirs: the postgres user must reach the data and socket dirs.
    base = Path(tempfile.mkdtemp(prefix="lanshare-pg-"))
    shutil.chown(base, "postgres")
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    shutil.chown(sockets, "postgres")

    def as_postgres(*args: str | Path) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, args)], check=True, capture_output=True, timeout=120
        )

    as_postgres(binaries / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-k {sockets} -p {PORT} -c listen_addresses='' -c fsync=off"
    as_postgres(binaries / "pg_ctl", "-D", data, "-o", options, "-l", base / "log", "-w", "start")
    try:
        yield PostgresServer(sockets, PORT)
    finally:
        as_postgres(binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty index database on each backend lanshare supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()
