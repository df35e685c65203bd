"""``lanshare serve``: run the daemon until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging

from lanshare.cli import EXIT_OK
from lanshare.context import Context
from lanshare.daemon import run


def run_serve(args: argparse.Namespace) -> int:
    """Load the configuration, serve until told to stop, exit 0 after a graceful shutdown."""
    context = Context.from_args(args)
    config = context.config
    if context.repo_path != config.repo.path:
        config = dataclasses.replace(config, repo=dataclasses.replace(config.repo, path=context.repo_path))
    # journald adds its own timestamps; a terminal reader gets the level and the source.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(run(config))
    return EXIT_OK
