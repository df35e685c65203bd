"""The update path: the ordered commits a machine must deploy to reach the newest reachable one.

DESIGN §3.  From the deployed commit C on ref R, walk R from its head back to C.  The next step is
the oldest checkpoint strictly newer than C, or R's head when there is none.  A checkpoint is a
commit marked ``lanshare.checkpoint`` or one that names a ref to continue on
(``eos.checkpoint-target`` / ``ostree.endoflife-rebase``).  Once the walk reaches R's head, a
pending target (from the last step that carried one, or the head itself) switches the walk to the
target ref, whose checkpoints and head follow, recursively.  Newer commits on R — emergency fixes
on the old branch — are always taken before the switch, as eos-updater does.  A ref already
visited is a cycle and ends the walk; a commit older than the current one is never a step unless
downgrades are allowed.

Only commit objects are needed to compute a path, so a cache that keeps commit-only history
(``.commitpartial``) can compute it for any peer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from lanshare.errors import Error
from lanshare.ostree.commit_tree import (
    CHECKPOINT_KEY,
    CHECKPOINT_TARGET_KEY,
    ENDOFLIFE_REBASE_KEY,
    REF_BINDING_KEY,
)
from lanshare.ostree.objects import Commit, ObjectType
from lanshare.ostree.repo import Repo, RepoError

# Guards against a corrupt history that loops back on itself through parent links.
MAX_HISTORY = 1_000_000


@dataclass(frozen=True)
class CommitInfo:
    """What the path needs to know about one commit."""

    checksum: str
    parent: str | None
    timestamp: int
    version: str | None = None
    checkpoint: bool = False
    target: str | None = None  # the ref to continue on after deploying this commit
    target_key: str | None = None
    ref_binding: tuple[str, ...] = ()
    complete: bool = True  # whole closure held (False: commit object only)

    @property
    def is_checkpoint(self) -> bool:
        """True for a mandatory stop: a marked checkpoint or a ref switch."""
        return self.checkpoint or self.target is not None

    @classmethod
    def from_commit(cls, checksum: str, commit: Commit, complete: bool = True) -> CommitInfo:
        """Extract the path-relevant fields from a parsed commit object."""
        target, target_key = None, None
        for key in (CHECKPOINT_TARGET_KEY, ENDOFLIFE_REBASE_KEY):
            value = commit.meta_value(key)
            if isinstance(value, str) and value:
                target, target_key = value, key
                break
        binding = commit.meta_value(REF_BINDING_KEY)
        return cls(
            checksum=checksum,
            parent=commit.parent,
            timestamp=commit.timestamp,
            version=commit.version,
            checkpoint=commit.meta_value(CHECKPOINT_KEY) is True,
            target=target,
            target_key=target_key,
            ref_binding=tuple(binding) if isinstance(binding, list) else (),
            complete=complete,
        )


class CommitGraph(Protocol):
    """Where the path reads refs and commits from: a repository, the index, or a peer's holdings."""

    def head(self, ref: str) -> str | None:
        """The commit a ref points to, or None when the ref is unknown."""

    def info(self, checksum: str) -> CommitInfo | None:
        """The commit's details, or None when its commit object is not held."""


class RepoGraph:
    """A :class:`CommitGraph` reading a local repository."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._partial = repo.partial_commits()
        self._cache: dict[str, CommitInfo | None] = {}

    def head(self, ref: str) -> str | None:
        """The local ref (or mirrored ref) ``ref`` points to."""
        try:
            return self.repo.resolve_rev(ref)
        except RepoError:
            return None

    def info(self, checksum: str) -> CommitInfo | None:
        """Parse the commit object if it is held."""
        if checksum not in self._cache:
            if not self.repo.has_object(checksum, ObjectType.COMMIT):
                self._cache[checksum] = None
            else:
                commit = self.repo.load_commit(checksum)
                self._cache[checksum] = CommitInfo.from_commit(
                    checksum, commit, complete=checksum not in self._partial
                )
        return self._cache[checksum]


class PathError(Error):
    """The path cannot be computed; ``missing`` names exactly what is absent."""

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


@dataclass(frozen=True)
class Step:
    """One commit to deploy, with the ref it is on and why it is a step."""

    commit: str
    ref: str
    version: str | None
    reason: str
    timestamp: int
    complete: bool

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dictionary."""
        return {
            "commit": self.commit,
            "ref": self.ref,
            "version": self.version,
            "reason": self.reason,
            "timestamp": self.timestamp,
            "held": "complete" if self.complete else "commit-only",
        }


@dataclass
class UpdatePath:
    """The steps from ``start`` on ``ref``, plus what stopped the walk early, if anything."""

    start: str
    ref: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> str:
        """The commit the machine ends on."""
        return self.steps[-1].commit if self.steps else self.start

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dictionary (``lanshare path --json``)."""
        return {
            "from": self.start,
            "ref": self.ref,
            "steps": [s.to_json() for s in self.steps],
            "final": self.final,
            "up_to_date": not self.steps,
            "notes": self.notes,
        }


def _segment(
    graph: CommitGraph, ref: str, head: str, current: str, passed: set[str], on_start_ref: bool
) -> list[CommitInfo]:
    """Commits on ``ref`` newer than ``current`` (or than any commit already passed), oldest first."""
    newer: list[CommitInfo] = []
    checksum: str | None = head
    while checksum is not None and checksum != current and checksum not in passed:
        info = graph.info(checksum)
        if info is None:
            child = f" (parent of {newer[-1].checksum})" if newer else " (its head)"
            raise PathError(
                f"commit {checksum} on {ref}{child} is not held, so the path past it cannot be computed",
                missing=[checksum],
            )
        newer.append(info)
        checksum = info.parent
        if len(newer) > MAX_HISTORY:
            raise PathError(f"history of {ref} does not end: a parent link loops")
    if checksum is None and on_start_ref:
        raise PathError(f"commit {current} is not on {ref} (walked {len(newer)} commits back from its head)")
    newer.reverse()
    return newer


def compute_path(
    graph: CommitGraph, start: str, ref: str | None = None, *, allow_downgrade: bool = False
) -> UpdatePath:
    """Compute the update path from the deployed commit ``start`` (on ``ref``, default its binding)."""
    start_info = graph.info(start)
    if ref is None:
        if start_info is None or not start_info.ref_binding:
            raise PathError(f"commit {start} is not held and no --ref was given: cannot tell its ref")
        ref = start_info.ref_binding[0]
    path = UpdatePath(start, ref)
    current = start
    # "Older" means older than the deployed commit: an emergency fix on the old ref may be newer
    # than the target ref's head, and following the switch after it is still an upgrade.
    start_ts = start_info.timestamp if start_info else None
    passed = {start}
    pending = start_info.target if start_info else None
    visited = [ref]
    on_start_ref = True
    switched_from: str | None = None
    while True:
        head = graph.head(ref)
        if head is None:
            raise PathError(f"ref {ref} is not held", missing=[f"ref:{ref}"])
        segment = _segment(graph, ref, head, current, passed, on_start_ref)
        if not allow_downgrade and start_ts is not None:
            older = [c for c in segment if c.timestamp < start_ts]
            segment = [c for c in segment if c.timestamp >= start_ts]
            if older and not segment:
                path.notes.append(f"{ref} only has commits older than the current one: no downgrade")
        if segment:
            step = next((c for c in segment if c.is_checkpoint), segment[-1])
            if step.is_checkpoint and step is not segment[-1]:
                reason = "checkpoint" if step.checkpoint else f"checkpoint: continue on {step.target}"
            elif step.target:
                reason = f"head of {ref}; continue on {step.target}"
            else:
                reason = f"head of {ref}"
            if switched_from:
                reason = f"{reason} (switched from {switched_from})"
                switched_from = None
            path.steps.append(Step(step.checksum, ref, step.version, reason, step.timestamp, step.complete))
            current = step.checksum
            passed.add(current)
            if step.target:
                pending = step.target
            continue
        if pending is None:
            break
        if pending in visited:
            path.notes.append("cycle in checkpoint targets: " + " → ".join([*visited, pending]) + "; stopped")
            break
        visited.append(pending)
        switched_from, ref, pending, on_start_ref = ref, pending, None, False
    return path


def deployed_ref(graph: CommitGraph, commit: str) -> str | None:
    """The ref a commit is bound to (``ostree.ref-binding``), when known."""
    info = graph.info(commit)
    return info.ref_binding[0] if info and info.ref_binding else None


__all__ = [
    "CommitGraph",
    "CommitInfo",
    "PathError",
    "RepoGraph",
    "Step",
    "UpdatePath",
    "compute_path",
    "deployed_ref",
]
