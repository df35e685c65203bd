"""``lanshare pull``: fetch a ref or commit from peers or the origin, verified, into the repository.

When this machine's daemon runs on the same repository, the pull is handed to it over its control
socket (:mod:`lanshare.control`): it has everything loaded, and its own rounds never race this
pull on the same refs.  Otherwise this process pulls.  Either way the output is the same.  The
imports here are the light ones: a pull the daemon runs starts in a few tens of milliseconds,
and the pull engine (aiohttp, SQLAlchemy) is imported only when this process pulls.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lanshare.cli import EXIT_FAILURE, EXIT_OK, print_json
from lanshare.config import Config, load_config
from lanshare.errors import PullError
from lanshare.progress import ProgressCallback, pull_progress_bar
from lanshare.units import format_size


def _report(document: dict[str, Any]) -> None:
    commit, ref = document["commit"], document["ref"]
    where = f"{ref} at {commit}" if ref else commit
    by = " (pulled by the daemon)" if document.get("pulled_by") == "daemon" else ""
    if document["up_to_date"]:
        print(f"pull: {where}: already up to date{by}")
        return
    previous = document["previous"]
    moved = f" (was {previous})" if previous and previous != commit else ""
    print(
        f"pull: {where}{moved}: {document['objects_fetched']} objects, "
        f"{format_size(document['bytes_fetched'])} in {document['duration_seconds']:.1f} s{by}"
    )
    for name, stats in document["sources"].items():
        print(f"  {name}: {stats['objects']} objects, {format_size(stats['bytes'])}")


def _warnings(document: dict[str, Any]) -> None:
    for name, reason in document["abandoned_sources"].items():
        print(f"lanshare: warning: stopped using {name}: {reason}", file=sys.stderr)
    for rejected in document["rejected_commits"]:
        print(f"lanshare: warning: rejected commit {rejected}", file=sys.stderr)


def _note(text: str) -> None:
    print(f"lanshare: {text}", file=sys.stderr)


def _by_daemon(
    args: argparse.Namespace, config: Config, progress: ProgressCallback | None
) -> dict[str, Any] | None:
    """The daemon's pull document, or None when no daemon on this repository takes the pull."""
    from lanshare.control.client import DaemonPulls

    daemon = DaemonPulls.for_command(config, args.repo)
    return daemon.pull(args.target, args.ref, tuple(args.sources), progress, _note)


def _here(args: argparse.Namespace, config: Config, progress: ProgressCallback | None) -> dict[str, Any]:
    """Pull in this process; the ``--json`` document."""
    import asyncio

    from lanshare.context import Context
    from lanshare.plan import plan_from_config
    from lanshare.pull import pull
    from lanshare.pull.configured import pull_options, record_pull

    ctx = Context(config, args.repo)
    plan = plan_from_config(config, args.sources)
    repo = ctx.repo
    # A bare --repo with no config file has no state directory to keep an index in.
    index = ctx.index if config.files or args.repo is None else None
    result = asyncio.run(
        pull(
            repo,
            args.target,
            plan,
            ref=args.ref,
            options=pull_options(config),
            index=index,
            progress=progress,
        )
    )
    record_pull(repo, index, result, regenerate_summary=config.repo.regenerate_summary)
    return {**result.to_json(), "pulled_by": "command"}


def run_pull(args: argparse.Namespace) -> int:
    """Pull ``args.target`` and report; exit 1 when no source could provide a verified commit."""
    config = load_config(args.config)
    try:
        with pull_progress_bar(not args.json) as progress:
            document = _by_daemon(args, config, progress) or _here(args, config, progress)
    except PullError as e:
        if not args.json:
            raise
        print_json({"target": args.target, "ref": args.ref, "error": str(e)})
        return EXIT_FAILURE
    _warnings(document)
    if args.json:
        print_json(document)
    else:
        _report(document)
    return EXIT_OK
