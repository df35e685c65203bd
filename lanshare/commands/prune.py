"""``lanshare prune``: keep every checkpoint chain, pin and lease; sweep the rest within max_size."""

from __future__ import annotations

import argparse

from lanshare.cli import EXIT_OK, print_json
from lanshare.context import Context
from lanshare.index import sync
from lanshare.prune import PruneReport, prune
from lanshare.retention import PinRule, RetentionPolicy
from lanshare.units import format_size


def policy_for(ctx: Context) -> RetentionPolicy:
    """The retention policy: config, plus pins, leases and last use recorded in the index."""
    retention = ctx.config.retention
    pins = [PinRule(p.ref, p.commit, p.reason) for p in ctx.config.pins]
    pins += sync.pin_rules(ctx.index)
    return RetentionPolicy(
        keep_latest=retention.keep_latest,
        keep_younger_than=int(retention.keep_younger_than.total_seconds()),
        max_size=retention.max_size,
        followed_refs=list(ctx.config.origin.refs) or None,
        pins=pins,
        leases=sync.active_leases(ctx.index),
        last_used=sync.last_used(ctx.index),
        now=ctx.now(),
    )


def _print(report: PruneReport) -> None:
    verb = "would free" if report.dry_run else "freed"
    print(
        f"prune: {verb} {report.objects_freed} objects ({format_size(report.bytes_freed)}); "
        f"kept {report.objects_kept} objects ({format_size(report.bytes_kept)})"
    )
    for commit, reasons in sorted(report.kept.items()):
        print(f"  keep {commit[:12]}: {'; '.join(reasons)}")
    for commit, reasons in sorted(report.commit_only.items()):
        print(f"  keep commit object only {commit[:12]}: {'; '.join(reasons)}")
    for commit in report.evicted:
        print(f"  evict {commit[:12]}")


def run_prune(args: argparse.Namespace) -> int:
    """Prune the configured (or ``--repo``) repository, then bring the index up to date."""
    ctx = Context.from_args(args)
    sync.drop_dead_leases(ctx.index)  # a killed pull's lease no longer blocks retention
    report = prune(ctx.repo, policy_for(ctx), dry_run=args.dry_run)
    if not args.dry_run:
        sync.reindex(ctx.index, ctx.repo)
    if args.json:
        print_json(report.to_json())
    else:
        _print(report)
    return EXIT_OK
