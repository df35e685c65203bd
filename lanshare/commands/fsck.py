"""``lanshare fsck``: check a repository and report each problem by object."""

from __future__ import annotations

import argparse

from lanshare.cli import EXIT_FAILURE, EXIT_OK, print_json
from lanshare.fsck import fsck
from lanshare.ostree.repo import Repo
from lanshare.progress import progress_bar


def run_fsck(args: argparse.Namespace) -> int:
    """Run fsck and print a report; exit 1 when anything is wrong."""
    repo = Repo.open(args.repo)
    total = sum(1 for _ in repo.iter_objects())
    with progress_bar("fsck", total) as advance:
        report = fsck(repo, progress=advance)
    if args.json:
        print_json(report.to_json())
    else:
        for problem in report.problems:
            print(f"{problem.kind}: {problem.object}: {problem.message}")
        status = "no problems found" if report.ok else f"{len(report.problems)} problem(s) found"
        print(
            f"fsck: {report.objects_checked} objects, {report.commits_checked} complete commits, "
            f"{report.partial_commits} partial: {status}"
        )
    return EXIT_OK if report.ok else EXIT_FAILURE
