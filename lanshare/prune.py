"""Prune: sweep what the retention plan does not keep, safe against a crash at any instruction.

Invariants that hold after every single filesystem operation, so SIGKILL anywhere leaves a
repository that ``ostree fsck`` and ``lanshare fsck`` accept:

1. A commit that loses part of its tree is first marked ``.commitpartial`` (durably), so it
   never appears complete with objects missing.
2. An evicted commit's ``.commit`` object goes before any object of its tree, so no complete
   commit ever points at a deleted object.
3. Nothing a kept commit reaches is ever deleted (the plan's mark set), and the sweep holds the
   repository lock exclusively so no writer can start relying on an object being swept.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.retention import ObjectKey, RetentionPolicy, plan_retention

# Commits first (invariant 2), then their detached metadata, then everything else.
_SWEEP_ORDER = {ObjectType.COMMIT: 0, ObjectType.TOMBSTONE_COMMIT: 0, ObjectType.COMMIT_META: 1}


@dataclass
class PruneReport:
    """What prune removed (or would remove, with ``dry_run``) and why each commit stayed."""

    dry_run: bool
    objects_freed: int = 0
    bytes_freed: int = 0
    objects_kept: int = 0
    bytes_kept: int = 0
    kept: dict[str, list[str]] = field(default_factory=dict)
    commit_only: dict[str, list[str]] = field(default_factory=dict)
    evicted: list[str] = field(default_factory=list)
    made_partial: list[str] = field(default_factory=list)
    stale_tmp_files: int = 0

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dictionary (``lanshare prune --json``)."""
        return {
            "dry_run": self.dry_run,
            "objects_freed": self.objects_freed,
            "bytes_freed": self.bytes_freed,
            "objects_kept": self.objects_kept,
            "bytes_kept": self.bytes_kept,
            "kept": self.kept,
            "commit_only": self.commit_only,
            "evicted": self.evicted,
            "made_partial": self.made_partial,
            "stale_tmp_files": self.stale_tmp_files,
        }


def _fsync_dir(path: os.PathLike[str] | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(
    repo: Repo,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    on_delete: Callable[[ObjectKey], None] | None = None,
) -> PruneReport:
    """Mark with the retention plan, then sweep (unless ``dry_run``); returns the report."""
    with repo.lock(exclusive=True):
        report = PruneReport(dry_run=dry_run)
        if not dry_run:
            # Under the exclusive lock no writer is mid-transaction: staging files are stale.
            report.stale_tmp_files = repo.clean_tmp()
        plan = plan_retention(repo, policy)
        garbage = sorted(plan.garbage, key=lambda key: (_SWEEP_ORDER.get(key[1], 2), key))
        report.kept = plan.full
        report.commit_only = plan.commit_only
        report.evicted = sorted(plan.evicted)
        report.made_partial = sorted(plan.newly_partial)
        report.objects_kept = len(plan.marked)
        report.bytes_kept = plan.bytes_kept
        report.objects_freed = len(garbage)
        report.bytes_freed = plan.bytes_freed
        if dry_run:
            return report
        for commit in plan.newly_partial:
            repo.mark_partial(commit)
        if plan.newly_partial:
            _fsync_dir(repo.state_dir)
        for key in garbage:
            checksum, kind = key
            with suppress(FileNotFoundError):
                os.unlink(repo.object_path(checksum, kind))
            if on_delete:
                on_delete(key)
        for commit in plan.evicted:
            repo.clear_partial(commit)
        return report
