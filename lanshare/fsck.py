"""Check a repository: every object's checksum, every complete commit's closure, refs, signatures."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lanshare.errors import CorruptObject, Error, MissingObject
from lanshare.ostree.objects import ObjectType, sha256_hex, validate_metadata_object
from lanshare.ostree.repo import Repo

Verifier = Callable[[Repo, str], str | None]
_BATCH = 256


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the repository, named by the object (or ref) it concerns."""

    object: str
    kind: str  # corrupt | missing | ref | signature
    message: str


@dataclass
class FsckReport:
    """What fsck looked at and what it found."""

    objects_checked: int = 0
    commits_checked: int = 0
    partial_commits: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dictionary (``lanshare fsck --json``)."""
        return {
            "ok": self.ok,
            "objects_checked": self.objects_checked,
            "commits_checked": self.commits_checked,
            "partial_commits": self.partial_commits,
            "problems": [asdict(p) for p in self.problems],
        }


def _check_object(repo: Repo, checksum: str, kind: ObjectType, path: Path) -> Problem | None:
    name = f"{checksum}.{kind.value}"
    try:
        if kind is ObjectType.FILE:
            repo.verify_content(checksum)
        else:
            data = path.read_bytes()
            if kind is not ObjectType.COMMIT_META and sha256_hex(data) != checksum:
                return Problem(name, "corrupt", f"checksum mismatch (content hashes to {sha256_hex(data)})")
            validate_metadata_object(kind, data, name)
    except CorruptObject as e:
        return Problem(name, "corrupt", e.reason)
    except MissingObject as e:
        return Problem(name, "missing", str(e))
    except OSError as e:
        return Problem(name, "corrupt", f"unreadable: {e.strerror}")
    return None


def _check_batch(
    repo: Repo, batch: list[tuple[str, ObjectType, Path]]
) -> list[tuple[str, ObjectType, Problem]]:
    found = []
    for checksum, kind, path in batch:
        problem = _check_object(repo, checksum, kind, path)
        if problem:
            found.append((checksum, kind, problem))
    return found


def fsck(
    repo: Repo,
    *,
    verify_signature: Verifier | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> FsckReport:
    """Check everything in ``repo``; ``verify_signature(repo, commit)`` returns an error or None."""
    report = FsckReport()
    objects = list(repo.iter_objects())
    bad: set[tuple[str, ObjectType]] = set()
    batches = [objects[i : i + _BATCH] for i in range(0, len(objects), _BATCH)]
    # Decompression and hashing release the GIL, so a thread per core checks content in parallel;
    # batches keep the per-future overhead off the main thread.
    with ThreadPoolExecutor(max_workers=workers or (os.cpu_count() or 1)) as pool:
        for batch, problems in zip(batches, pool.map(lambda b: _check_batch(repo, b), batches), strict=True):
            report.objects_checked += len(batch)
            for checksum, kind, problem in problems:
                report.problems.append(problem)
                bad.add((checksum, kind))
            if progress:
                progress(len(batch))
    on_disk = {(c, k) for c, k, _ in objects}
    present = on_disk - bad
    partial = repo.partial_commits()
    for checksum, kind in sorted(present):
        if kind is not ObjectType.COMMIT:
            continue
        if checksum in partial:
            report.partial_commits += 1
            continue
        report.commits_checked += 1
        report.problems.extend(_check_closure(repo, checksum, on_disk))
        if verify_signature is not None:
            error = verify_signature(repo, checksum)
            if error:
                report.problems.append(Problem(f"{checksum}.commit", "signature", error))
    report.problems.extend(_check_refs(repo, present))
    return report


def _check_closure(repo: Repo, commit: str, on_disk: set[tuple[str, ObjectType]]) -> list[Problem]:
    # Corrupt objects are already reported by the object pass; here only absent ones count.
    problems = []
    try:
        for checksum, kind in repo.iter_closure(commit):
            if (checksum, kind) not in on_disk:
                problems.append(
                    Problem(f"{checksum}.{kind.value}", "missing", f"needed by complete commit {commit}")
                )
    except (MissingObject, CorruptObject):
        # The walk stops below an absent or corrupt tree, which was yielded (or checked) first
        # and so is already reported.
        pass
    return problems


def _check_refs(repo: Repo, present: set[tuple[str, ObjectType]]) -> list[Problem]:
    problems = []
    try:
        refs = repo.list_collection_refs()
    except Error as e:
        return [Problem("refs", "ref", str(e))]
    for (collection_id, ref), commit in refs.items():
        if (commit, ObjectType.COMMIT) not in present:
            label = f"({collection_id}, {ref})" if collection_id else ref
            problems.append(
                Problem(f"ref {label}", "ref", f"points to {commit}, which is missing or corrupt")
            )
    return problems
