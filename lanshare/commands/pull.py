"""``lanshare pull``: fetch a ref or commit from peers or the origin, verified, into the repository."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lanshare.cli import EXIT_FAILURE, EXIT_OK, print_json
from lanshare.context import Context
from lanshare.ostree.repo_summary import refresh_summary
from lanshare.plan import plan_from_config
from lanshare.pull import ProgressUpdate, PullError, PullOptions, PullResult, TrustPolicy, pull
from lanshare.pull.engine import ProgressCallback
from lanshare.pull.fleet import fleet_options
from lanshare.units import format_size


@contextmanager
def _progress(enabled: bool) -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr (objects, bytes, rate, source) when a person is watching."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # only for a person watching: ~20 ms of every pull's start-up otherwise

    with tqdm(desc="pull", unit="obj", leave=False) as bar:

        def update(u: ProgressUpdate) -> None:
            if bar.total != u.objects_total:
                bar.total = u.objects_total
            elapsed = bar.format_dict["elapsed"] or 1e-9
            rate = format_size(int(u.bytes_done / elapsed))
            text = f"{u.phase} {format_size(u.bytes_done)} {rate}/s from {u.source}"
            bar.set_postfix_str(text, refresh=False)
            bar.update(u.objects_done - bar.n)

        yield update


def _report(result: PullResult) -> None:
    where = f"{result.ref} at {result.commit}" if result.ref else result.commit
    if result.up_to_date:
        print(f"pull: {where}: already up to date")
    else:
        moved = f" (was {result.previous})" if result.previous and result.previous != result.commit else ""
        print(
            f"pull: {where}{moved}: {result.objects_fetched} objects, "
            f"{format_size(result.bytes_fetched)} in {result.duration:.1f} s"
        )
        for name, stats in result.sources.items():
            print(f"  {name}: {stats.objects} objects, {format_size(stats.bytes)}")


def _warnings(result: PullResult) -> None:
    for name, reason in result.abandoned.items():
        print(f"lanshare: warning: stopped using {name}: {reason}", file=sys.stderr)
    for rejected in result.rejected:
        print(f"lanshare: warning: rejected commit {rejected}", file=sys.stderr)


def run_pull(args: argparse.Namespace) -> int:
    """Pull ``args.target`` and report; exit 1 when no source could provide a verified commit."""
    ctx = Context.from_args(args)
    config = ctx.config
    plan = plan_from_config(config, args.sources)
    repo = ctx.repo
    # A bare --repo with no config file has no state directory to keep an index in.
    index = ctx.index if config.files or args.repo is None else None
    options = PullOptions(
        trust=TrustPolicy.from_config(config.trust),
        parallel=config.pull.parallel,
        fleet=fleet_options(config),
    )
    try:
        with _progress(not args.json) as progress:
            result = asyncio.run(
                pull(repo, args.target, plan, ref=args.ref, options=options, index=index, progress=progress)
            )
    except PullError as e:
        if not args.json:
            raise
        print_json({"target": args.target, "ref": args.ref, "error": str(e)})
        return EXIT_FAILURE
    if not result.up_to_date:
        refresh_summary(repo, regenerate=config.repo.regenerate_summary)
        if index is not None:
            from lanshare.index import sync

            sync.record_commits(index, repo, [result.commit], result.ref)
    _warnings(result)
    if args.json:
        print_json(result.to_json())
    else:
        _report(result)
    return EXIT_OK
