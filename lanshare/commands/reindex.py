"""``lanshare reindex``: rebuild the index from the repository, which is the truth."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from lanshare.cli import EXIT_OK, print_json
from lanshare.context import Context
from lanshare.index.sync import reindex


def run_reindex(args: argparse.Namespace) -> int:
    """Rebuild commits and refs (and pins that survive only as refs) from the repository."""
    ctx = Context.from_args(args)
    report = reindex(ctx.index, ctx.repo)
    if args.json:
        print_json(asdict(report))
    else:
        print(f"reindex: {report.commits} commits, {report.refs} refs, {report.pins_restored} pins restored")
    return EXIT_OK
