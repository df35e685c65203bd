"""``lanshare upgrade``: deploy the next step of the update path (or every step with ``--all``)."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from functools import partial

from lanshare.cli import print_json
from lanshare.commands.pull import _progress
from lanshare.context import Context
from lanshare.errors import Error, UsageError
from lanshare.ostree.objects import is_checksum
from lanshare.plan import plan_from_config
from lanshare.pull import PullOptions, TrustPolicy
from lanshare.pull.fleet import fleet_options
from lanshare.update_path import Step
from lanshare.upgrade import (
    EXIT_FAILED,
    EXIT_USAGE,
    Deployed,
    Fetcher,
    Upgrade,
    UpgradeReport,
    read_deployed,
)


def _warn(message: str) -> None:
    print(f"lanshare: warning: {message}", file=sys.stderr)


def _show_step(step: Step, left: int) -> None:
    version = step.version or "-"
    more = f" ({left - 1} more after it)" if left > 1 else " (the last step)"
    print(f"deploying {step.commit} on {step.ref}, version {version}: {step.reason}{more}", flush=True)


def _relay(json_output: bool, done: subprocess.CompletedProcess[str]) -> None:
    """Pass the hook's output on; with --json its stdout goes to stderr so stdout stays one document."""
    if done.stdout:
        print(done.stdout, end="", file=sys.stderr if json_output else sys.stdout)
    if done.stderr:
        print(done.stderr, end="", file=sys.stderr)


def _summary(report: UpgradeReport) -> None:
    if report.status == "done" and not report.steps_deployed:
        print(f"up to date: {report.deployed_before} is the end of the update path")
    elif report.status == "done":
        print(f"done: deployed {report.steps_deployed[-1].commit}, the end of the update path")
    elif report.status == "more":
        print(
            f"{len(report.remaining)} more step(s) after this one: reboot if the deployment needs it, "
            "then run lanshare upgrade again"
        )


def run_upgrade(args: argparse.Namespace) -> int:
    """Walk the path from the deployed commit; exit 0 done, 10 more steps, 1 failed, 2 usage/config."""
    ctx = Context.from_args(args)
    config = ctx.config
    report = UpgradeReport(None)
    try:
        if args.start is not None:
            start = args.start if is_checksum(args.start) else ctx.repo.resolve_rev(args.start)
            deployed = Deployed(start, None, "--from")
        else:
            deployed = read_deployed(config.upgrade)
        report.deployed_before = deployed.commit
        upgrade = _upgrade(ctx, args)
        asyncio.run(upgrade.run(deployed, args.ref, report, walk_all=args.all))
    except Error as e:
        if not args.json:
            raise
        report.status, report.error = "failed", str(e)
        print_json(report.to_json())
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_FAILED
    if args.json:
        print_json(report.to_json())
    else:
        _summary(report)
    return report.exit_code


def _upgrade(ctx: Context, args: argparse.Namespace) -> Upgrade:
    """The upgrade run, pulling as ``lanshare pull`` does (same sources, trust, index and progress)."""
    config = ctx.config
    # A bare --repo with no config file has no state directory to keep an index in (as lanshare pull).
    index = ctx.index if config.files or args.repo is None else None
    json_output: bool = args.json
    options = PullOptions(
        trust=TrustPolicy.from_config(config.trust),
        parallel=config.pull.parallel,
        fleet=fleet_options(config),
    )
    fetcher = Fetcher(
        ctx.repo, plan_from_config(config), options, index, partial(_progress, not json_output), _warn
    )
    show = (lambda step, left: None) if json_output else _show_step
    return Upgrade(fetcher, config.upgrade, show, partial(_relay, json_output), _warn)
