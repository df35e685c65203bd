"""What a command runs against: the configuration, the repository it names, and the index."""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lanshare.config import Config, load_config
from lanshare.ostree.repo import Repo

if TYPE_CHECKING:  # SQLAlchemy costs ~0.15 s to import; commands without the index never load it
    from sqlalchemy import Engine

# Engines opened by Context.index in this process, closed by the CLI when a command returns.
_open_engines: list[Engine] = []


class Context:
    """Lazily opened resources of one command invocation."""

    def __init__(self, config: Config, repo_path: Path | None = None) -> None:
        self.config = config
        self.repo_path = repo_path or config.repo.path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        """Load the configuration named by ``--config`` (or the default) and honour ``--repo``."""
        return cls(load_config(getattr(args, "config", None)), getattr(args, "repo", None))

    @functools.cached_property
    def repo(self) -> Repo:
        """The repository, created (with the configured collection ID) on first use."""
        return Repo.init(self.repo_path, self.config.repo.collection_id)

    def open_repo(self) -> Repo:
        """The repository, which must already exist (for commands that only read)."""
        return Repo.open(self.repo_path)

    @functools.cached_property
    def index(self) -> Engine:
        """The index database, migrated to this version's schema."""
        from lanshare.index.db import open_index

        engine = open_index(self.config.database.url)
        _open_engines.append(engine)
        return engine

    @staticmethod
    def close_all() -> None:
        """Close the index connections commands opened (a PostgreSQL connection says goodbye)."""
        while _open_engines:
            _open_engines.pop().dispose()

    @staticmethod
    def now() -> float:
        """The current Unix time (one place to read the clock)."""
        return time.time()
