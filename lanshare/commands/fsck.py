"""``lanshare fsck``: check a repository and report each problem by object."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

from lanshare.cli import EXIT_FAILURE, EXIT_OK, print_json
from lanshare.context import Context
from lanshare.errors import Error
from lanshare.fsck import Verifier, fsck
from lanshare.ostree import signing
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.progress import progress_bar


def signature_checker(keyring: Path | None, ed25519_keys: list[str]) -> Verifier | None:
    """A fsck callback verifying each complete commit's signatures, or None when no key is set."""
    if keyring is None and not ed25519_keys:
        return None

    def check(repo: Repo, commit: str) -> str | None:
        try:
            data = repo.read_metadata_bytes(commit, ObjectType.COMMIT)
            signing.verify_commit_signatures(
                data,
                repo.load_commitmeta(commit),
                gpg_keyring=keyring,
                ed25519_keys=ed25519_keys,
                checksum=commit,
            )
        except Error as e:
            return str(e)
        return None

    return check


def run_fsck(args: argparse.Namespace) -> int:
    """Run fsck and print a report; exit 1 when anything is wrong."""
    ctx = Context.from_args(args)
    repo = ctx.open_repo()
    keyring = args.gpg_keyring or ctx.config.trust.gpg_keyring
    keys = args.ed25519_key or [base64.b64encode(k).decode() for k in ctx.config.trust.ed25519_keys]
    total = sum(1 for _ in repo.iter_objects())
    with progress_bar("fsck", total) as advance:
        report = fsck(repo, verify_signature=signature_checker(keyring, keys), progress=advance)
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
