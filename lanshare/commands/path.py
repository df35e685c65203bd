"""``lanshare path``: print the update path through every checkpoint, or what is missing for it."""

from __future__ import annotations

import argparse
import sys

from lanshare.cli import EXIT_FAILURE, EXIT_OK, print_json
from lanshare.context import Context
from lanshare.update_path import PathError, RepoGraph, compute_path


def run_path(args: argparse.Namespace) -> int:
    """Compute the path from ``--from`` on ``--ref`` over the repository's commits."""
    repo = Context.from_args(args).open_repo()
    graph = RepoGraph(repo)
    start = repo.resolve_rev(args.start) if len(args.start) != 64 else args.start
    try:
        path = compute_path(graph, start, args.ref, allow_downgrade=args.allow_downgrade)
    except PathError as e:
        if args.json:
            print_json({"from": start, "ref": args.ref, "error": str(e), "missing": e.missing})
        else:
            print(f"lanshare: error: {e}", file=sys.stderr)
            for item in e.missing:
                print(f"missing: {item}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print_json(path.to_json())
        return EXIT_OK
    print(f"update path from {start[:12]} on {path.ref}:")
    if not path.steps:
        print("  up to date")
    for number, step in enumerate(path.steps, 1):
        held = "" if step.complete else "  [commit only: content must be pulled]"
        version = step.version or "-"
        print(f"  {number}. {step.commit[:12]}  {step.ref:<20} {version:<10} {step.reason}{held}")
    for note in path.notes:
        print(f"  note: {note}")
    return EXIT_OK
