"""``lanshare upgrade``: deploy the next step of the update path (or every step with ``--all``)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import subprocess
import sys
from functools import partial

from lanshare.cli import print_json
from lanshare.context import Context
from lanshare.control.client import DaemonPulls
from lanshare.deploy.owner import Identity
from lanshare.deploy.reboot import reboot
from lanshare.errors import Error, UsageError
from lanshare.ostree.objects import is_checksum
from lanshare.plan import plan_from_config
from lanshare.progress import pull_progress_bar
from lanshare.pull.configured import pull_options
from lanshare.update_path import Step
from lanshare.upgrade import (
    EXIT_FAILED,
    EXIT_USAGE,
    Deployed,
    Fetcher,
    Upgrade,
    UpgradeError,
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
    pending = report.pending
    if report.status == "reboot-needed" and pending is not None:
        print(
            f"reboot needed into {pending.version or pending.commit}: {pending.commit} on {pending.ref} is "
            f"deployed and pending; nothing deployed (run lanshare upgrade again after the reboot)"
        )
    elif report.status == "done" and not report.steps_deployed:
        print(f"up to date: {report.deployed_before} is the end of the update path")
    elif report.status == "done":
        print(f"done: deployed {report.steps_deployed[-1].commit}, the end of the update path")
    elif report.status == "more":
        print(
            f"{len(report.remaining)} more step(s) after this one: reboot if the deployment needs it, "
            "then run lanshare upgrade again"
        )
    if pending is not None and report.status != "reboot-needed":
        print(f"reboot needed into {pending.version or pending.commit} ({pending.commit} is pending)")
    if report.rebooting:
        print("rebooting now ([upgrade] reboot policy)")


def _reboot(ctx: Context, identity: Identity, report: UpgradeReport) -> None:
    """Reboot if the policy says so now: only ever into a step waiting for it."""
    config = ctx.config.upgrade
    # A hook with a deployed-commit file cannot say whether its step waits for a boot: assume it does.
    unknown = config.deploy is None and config.deployed_commit_command is None and bool(report.steps_deployed)
    if not (report.reboot_needed or unknown):
        return
    now = dt.datetime.now().astimezone()
    if not config.reboot.reboot_now(deployed_now=bool(report.steps_deployed), now=now):
        return
    with identity.as_root():
        problem = reboot(config.reboot_command)
    if problem is not None:
        raise UpgradeError(f"the step is deployed but the reboot failed: {problem}")
    report.rebooting = True


def run_upgrade(args: argparse.Namespace) -> int:
    """Walk the path from the deployed commit; exit 0 done, 10 more, 11 reboot needed, 1 failed, 2 usage."""
    ctx = Context.from_args(args)
    config = ctx.config
    # Before anything opens the cache: as root, write it as its owner (the daemon's user).
    identity = Identity.become_owner(ctx.repo_path, config.state_dir)
    report = UpgradeReport(None)
    try:
        if args.start is not None:
            start = args.start if is_checksum(args.start) else ctx.repo.resolve_rev(args.start)
            deployed = Deployed(start, None, "--from")
        else:
            with identity.as_root():
                deployed = read_deployed(config.upgrade)
        report.deployed_before, report.note = deployed.commit, deployed.note
        if deployed.note is not None and not args.json:
            print(f"deployed: {deployed.commit} ({deployed.note}; {deployed.source})")
        upgrade = _upgrade(ctx, args, identity)
        asyncio.run(upgrade.run(deployed, args.ref, report, walk_all=args.all))
        _reboot(ctx, identity, report)
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


def _upgrade(ctx: Context, args: argparse.Namespace, identity: Identity) -> Upgrade:
    """The upgrade run, pulling as ``lanshare pull`` does (same sources, trust, index and progress)."""
    config = ctx.config
    # A bare --repo with no config file has no state directory to keep an index in (as lanshare pull).
    index = ctx.index if config.files or args.repo is None else None
    json_output: bool = args.json
    fetcher = Fetcher(
        ctx.repo,
        plan_from_config(config),
        pull_options(config),
        index,
        partial(pull_progress_bar, not json_output),
        _warn,
        daemon=DaemonPulls.for_command(config, args.repo),
    )
    show = (lambda step, left: None) if json_output else _show_step
    return Upgrade(fetcher, config.upgrade, show, partial(_relay, json_output), _warn, identity)
