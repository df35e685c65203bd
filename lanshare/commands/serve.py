"""``lanshare serve``: run the daemon until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging

from lanshare import event_loop
from lanshare.cli import EXIT_OK
from lanshare.context import Context
from lanshare.daemon import run

# glibc's mallopt parameter; a fixed value also stops glibc raising the threshold on its own.
_M_MMAP_THRESHOLD = -3


def _give_freed_memory_back() -> None:
    """Make glibc map every block of 128 KiB or more on its own, so freeing it returns it to the OS.

    The daemon allocates and frees many such blocks (objects read for peers, batch groups) from
    several threads; glibc's default then keeps them in its heaps: under 50 pulling peers the
    daemon's RSS went from 86 to 365 MB, and stayed at 309 MB; with this, 106 MB peak and 92 MB
    after (bench/bench_load.py).  Not glibc (musl): nothing to do.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


def run_serve(args: argparse.Namespace) -> int:
    """Load the configuration, serve until told to stop, exit 0 after a graceful shutdown."""
    context = Context.from_args(args)
    config = context.config
    if context.repo_path != config.repo.path:
        config = dataclasses.replace(config, repo=dataclasses.replace(config.repo, path=context.repo_path))
    # journald adds its own timestamps; a terminal reader gets the level and the source.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _give_freed_memory_back()
    # uvloop where installed: a third less CPU per request served (lanshare/event_loop.py).
    event_loop.run(run(config))
    return EXIT_OK
