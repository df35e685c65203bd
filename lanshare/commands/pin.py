"""``lanshare pin`` / ``lanshare unpin``: admin pins, recorded in the index and mirrored as refs."""

from __future__ import annotations

import argparse
import fnmatch

from sqlalchemy import delete
from sqlalchemy.orm import Session

from lanshare.cli import EXIT_FAILURE, EXIT_OK, print_json
from lanshare.context import Context
from lanshare.errors import UsageError
from lanshare.index.models import Pin, PinSource
from lanshare.index.sync import COMMIT_PIN_PREFIX, REF_PIN_PREFIX
from lanshare.ostree.objects import is_checksum
from lanshare.ostree.repo import Repo, RepoError


def _as_commit(repo: Repo, target: str) -> str | None:
    """The commit ``target`` names when it is a checksum or a unique checksum prefix."""
    if is_checksum(target):
        return target
    if len(target) >= 8 and all(c in "0123456789abcdef" for c in target):
        try:
            return repo.resolve_rev(target)
        except RepoError:
            return None
    return None


def sync_pin_refs(repo: Repo, commits: list[str], globs: list[str]) -> None:
    """Point the mirror refs at what the pins cover, so ``ostree prune --refs-only`` keeps it too."""
    refs = repo.list_refs()
    for commit in commits:
        repo.write_ref(COMMIT_PIN_PREFIX + commit, commit)
    # A glob is mirrored as one ref per matching ref; `lanshare reindex` restores those as exact pins.
    for pattern in globs:
        for ref, head in refs.items():
            if not ref.startswith("lanshare/") and fnmatch.fnmatchcase(ref, pattern):
                repo.write_ref(REF_PIN_PREFIX + ref, head)


def _mirrors(ref: str, commit: str | None, glob: str) -> bool:
    """Whether ``ref`` is the mirror of the pin on ``commit`` (or, without one, on ``glob``)."""
    if commit:
        return ref == COMMIT_PIN_PREFIX + commit
    return ref.startswith(REF_PIN_PREFIX) and fnmatch.fnmatchcase(ref.removeprefix(REF_PIN_PREFIX), glob)


def run_pin(args: argparse.Namespace) -> int:
    """Record a pin on a commit or a ref glob and mirror it under ``refs/heads/lanshare/pins/``."""
    ctx = Context.from_args(args)
    commit = _as_commit(ctx.repo, args.target)
    glob = None if commit else args.target
    if glob is not None and (not glob or "\0" in glob or glob.startswith("/")):
        raise UsageError(f"pin: {glob!r} is neither a commit nor a ref glob")
    with Session(ctx.index) as session, session.begin():
        session.add(Pin(ref_glob=glob, commit=commit, reason=args.reason, source=PinSource.CLI))
    sync_pin_refs(ctx.repo, [commit] if commit else [], [glob] if glob else [])
    if args.json:
        print_json(
            {"pinned": commit or glob, "kind": "commit" if commit else "ref-glob", "reason": args.reason}
        )
    else:
        print(f"pinned {'commit' if commit else 'refs matching'} {commit or glob}")
    return EXIT_OK


def run_unpin(args: argparse.Namespace) -> int:
    """Remove the pins on a commit or glob, and their mirror refs; exit 1 if there was none."""
    ctx = Context.from_args(args)
    commit = _as_commit(ctx.repo, args.target)
    with Session(ctx.index) as session, session.begin():
        condition = Pin.commit == commit if commit else Pin.ref_glob == args.target
        removed = len(session.scalars(delete(Pin).where(condition).returning(Pin.id)).all())
    for ref in ctx.repo.list_refs():
        if _mirrors(ref, commit, args.target):
            ctx.repo.write_ref(ref, None)
    if args.json:
        print_json({"unpinned": commit or args.target, "removed": removed})
    elif removed:
        print(f"unpinned {commit or args.target}")
    else:
        print(f"lanshare: no pin on {commit or args.target}")
    return EXIT_OK if removed else EXIT_FAILURE
