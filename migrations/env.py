"""Alembic environment: lanshare passes in a connection; the alembic CLI passes a URL."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from lanshare.index.db import make_engine
from lanshare.index.models import Base

config = context.config
# render_as_batch: autogenerate writes batch_alter_table blocks, which SQLite needs for any
# ALTER beyond adding a column (it recreates the table) and PostgreSQL runs as plain ALTERs.
RENDER_AS_BATCH = True


def _url() -> str:
    """The database URL given to the alembic CLI."""
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: pass -x url=SQLALCHEMY_URL")
    return url


def _run(connection: Connection) -> None:
    """Run the migrations on ``connection``."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=RENDER_AS_BATCH,
        # lanshare's engine makes pysqlite emit real BEGINs (lanshare.index.db), so SQLite DDL
        # rolls back like PostgreSQL's; Alembic cannot know that by itself.
        transactional_ddl=True if connection.dialect.driver == "pysqlite" else None,
    )
    # Joins the caller's transaction when there is one (open_index), else starts its own.
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    """Pick the connection lanshare passed in, or connect to the CLI's URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Only the alembic CLI has an ini file; lanshare leaves logging to its own setup.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    if context.is_offline_mode():
        context.configure(
            url=_url(), target_metadata=Base.metadata, render_as_batch=RENDER_AS_BATCH, literal_binds=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


_main()
