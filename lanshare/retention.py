"""Retention (DESIGN §4): which commits must stay, in full or as commit objects only, and why.

The plan is computed from the repository alone plus a policy (config, pins, leases, last use).
Roots are kept with their whole closure: checkpoints of every followed ref (and of the refs their
targets and sources lead to), ref heads, the newest ``keep_latest`` commits of each followed ref,
commits younger than ``keep_younger_than``, pins and leases.  Every commit in a followed ref's
held history keeps at least its commit object (DESIGN §4 asks for those between a kept commit and
the head; keeping the older ones too costs a few hundred bytes each and lets a machine that is
years behind still find its way), so any peer can compute an update path.  Everything else is
evictable, least recently used first, once the repository is over ``max_size``;
objects reachable from no commit at all are garbage and always go.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from lanshare.errors import CorruptObject, MissingObject
from lanshare.ostree.objects import ObjectType, dirtree_checksums
from lanshare.ostree.repo import Repo
from lanshare.update_path import CommitInfo

ObjectKey = tuple[str, ObjectType]
PIN_REF_PREFIX = "lanshare/pins/"


@dataclass(frozen=True)
class PinRule:
    """An admin pin: every held commit on refs matching ``ref_glob``, or one ``commit``."""

    ref_glob: str | None = None
    commit: str | None = None
    reason: str = ""


@dataclass
class RetentionPolicy:
    """Everything retention needs besides the repository itself."""

    keep_latest: int = 3
    keep_younger_than: int = 30 * 86400  # seconds
    max_size: int | None = None  # bytes; None: no size limit, evict nothing that a commit reaches
    followed_refs: list[str] | None = None  # None: every ref in the repository
    pins: list[PinRule] = field(default_factory=list)
    leases: set[str] = field(default_factory=set)
    last_used: dict[str, float] = field(default_factory=dict)  # commit -> unix time
    now: float = 0.0


@dataclass
class RetentionPlan:
    """The outcome of the mark phase: what stays, what goes, and the rule behind each kept commit."""

    full: dict[str, list[str]] = field(default_factory=dict)  # commit -> reasons, whole closure kept
    commit_only: dict[str, list[str]] = field(default_factory=dict)  # commit object (+meta) kept
    evicted: list[str] = field(default_factory=list)  # commit objects to delete
    marked: set[ObjectKey] = field(default_factory=set)
    sizes: dict[ObjectKey, int] = field(default_factory=dict)
    newly_partial: list[str] = field(default_factory=list)  # complete commits losing their trees

    @property
    def garbage(self) -> list[ObjectKey]:
        """Objects on disk that no kept commit reaches (commit metadata follows its commit)."""
        return sorted(key for key in self.sizes if key not in self.marked)

    @property
    def bytes_kept(self) -> int:
        """Bytes of every object that stays."""
        return sum(self.sizes.get(key, 0) for key in self.marked)

    @property
    def bytes_freed(self) -> int:
        """Bytes of every object that goes."""
        return sum(size for key, size in self.sizes.items() if key not in self.marked)


def object_sizes(repo: Repo) -> dict[ObjectKey, int]:
    """Size on disk of every object, keyed by (checksum, type)."""
    sizes: dict[ObjectKey, int] = {}
    for checksum, kind, entry in repo.iter_object_entries():
        try:
            # Interned: the mark phase's keys, built from the checksums trees name, then share
            # these strings instead of holding a second copy of every checksum.
            sizes[(sys.intern(checksum), kind)] = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return sizes


class _Closures:
    """Walks commit closures over what is on disk, against the set of objects already marked.

    Relies on one invariant of ``marked``: a dirtree in it has its whole present subtree in it
    too (closures are added whole).  A walk therefore stops at any marked tree, so marking many
    commits that share most of their trees parses each tree once, as ``ostree prune`` does.
    """

    def __init__(self, repo: Repo, present: dict[ObjectKey, int]) -> None:
        self.repo = repo
        self.present = present
        self._roots: dict[str, tuple[str, str] | None] = {}
        # Trees outside ``marked`` may be walked again (a commit weighed against max_size and
        # not kept); a compact cache of their children saves re-reading them.
        self._trees: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {}

    def _root(self, commit: str) -> tuple[str, str] | None:
        if commit not in self._roots:
            try:
                parsed = self.repo.load_commit(commit, verify=False)
            except (MissingObject, CorruptObject):
                self._roots[commit] = None
            else:
                self._roots[commit] = (parsed.root_tree, parsed.root_meta)
        return self._roots[commit]

    def _tree(self, checksum: str, cache: bool) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(file checksums, dirmeta checksums, subtree checksums) of a dirtree; empty if unreadable."""
        children = self._trees.get(checksum)
        if children is None:
            try:
                data = self.repo.read_metadata_bytes(checksum, ObjectType.DIR_TREE, verify=False)
                files, dirs = dirtree_checksums(data, f"{checksum}.dirtree")
            except (MissingObject, CorruptObject):
                children = ((), (), ())
            else:
                children = (tuple(files), tuple(m for _, m in dirs), tuple(t for t, _ in dirs))
            if cache:
                # Interned: successive versions of a directory list mostly the same files, so
                # the cache holds each checksum string once.
                files_, metas, trees = children
                children = (
                    tuple(map(sys.intern, files_)),
                    tuple(map(sys.intern, metas)),
                    tuple(map(sys.intern, trees)),
                )
                self._trees[checksum] = children
        return children

    def unmarked(
        self, commit: str, marked: set[ObjectKey], *, cache: bool = True, budget: int | None = None
    ) -> set[ObjectKey] | None:
        """Present objects of the commit's closure not in ``marked`` (a partial commit gives what it has).

        With ``budget``, None as soon as they add up to more than ``budget`` bytes: a commit that
        cannot fit is known without walking its whole tree (``-1``: stop at the first one).
        ``cache=False`` when the result is about to be marked: its trees are never walked again.
        """
        root = self._root(commit)
        if root is None:
            return set()
        present, found, intern = self.present, set(), sys.intern
        file, dirmeta, dirtree = ObjectType.FILE, ObjectType.DIR_META, ObjectType.DIR_TREE
        left = math.inf if budget is None else budget  # bytes the result may still add
        # Keys that stay in the result hold interned checksums: the same strings as the keys of
        # ``present`` (object_sizes interns them), not one more copy per marked object.
        key = (root[1], dirmeta)
        if key in present and key not in marked:
            found.add((intern(root[1]), dirmeta))
            left -= present[key]
        stack = [root[0]]
        while stack:
            if left < 0:
                return None
            tree = stack.pop()
            key = (tree, dirtree)
            if key in marked or key in found or key not in present:
                continue
            found.add((intern(tree), dirtree))
            left -= present[key]
            files, metas, subtrees = self._tree(tree, cache)
            for checksum in files:
                key = (checksum, file)
                if key in present and key not in marked and key not in found:
                    found.add((intern(checksum), file))
                    left -= present[key]
            for checksum in metas:
                key = (checksum, dirmeta)
                if key in present and key not in marked and key not in found:
                    found.add((intern(checksum), dirmeta))
                    left -= present[key]
            stack.extend(subtrees)
        return None if left < 0 else found

    def fully_marked(self, commit: str, marked: set[ObjectKey]) -> bool:
        """Whether every present object of the commit's closure is in ``marked``."""
        return self.unmarked(commit, marked, budget=-1) == set()

    def closure_to_mark(self, commit: str, marked: set[ObjectKey]) -> set[ObjectKey]:
        """Every present object of the commit's closure not in ``marked``, about to be marked."""
        found = self.unmarked(commit, marked, cache=False)
        assert found is not None  # no budget
        return found

    def forget(self, keys: Iterable[ObjectKey]) -> None:
        """Drop the cached children of trees about to be marked: no walk enters them again."""
        for checksum, kind in keys:
            if kind is ObjectType.DIR_TREE:
                self._trees.pop(checksum, None)


def _commit_keys(commit: str) -> list[ObjectKey]:
    return [(commit, ObjectType.COMMIT), (commit, ObjectType.COMMIT_META)]


def load_commits(repo: Repo, sizes: dict[ObjectKey, int]) -> dict[str, CommitInfo]:
    """Parse every commit object on disk (unreadable ones are left to fsck and not kept)."""
    partial = repo.partial_commits()
    commits: dict[str, CommitInfo] = {}
    for checksum, kind in sizes:
        if kind is ObjectType.COMMIT:
            try:
                parsed = repo.load_commit(checksum, verify=False)
            except (MissingObject, CorruptObject):
                continue
            commits[checksum] = CommitInfo.from_commit(checksum, parsed, complete=checksum not in partial)
    return commits


def _history(head: str, commits: dict[str, CommitInfo]) -> list[str]:
    """Commits from ``head`` back through parents while their objects are held, newest first."""
    chain: list[str] = []
    seen: set[str] = set()
    checksum: str | None = head
    while checksum is not None and checksum in commits and checksum not in seen:
        seen.add(checksum)
        chain.append(checksum)
        checksum = commits[checksum].parent
    return chain


def _checkpoint_source(repo: Repo, head: str, commits: dict[str, CommitInfo]) -> str | None:
    # The oldest held commit of a ref may name the ref it came from (lanshare.checkpoint-source).
    chain = _history(head, commits)
    if not chain:
        return None
    value = repo.load_commit(chain[-1], verify=False).meta_value("lanshare.checkpoint-source")
    if isinstance(value, str) and "@" in value:
        return value.split("@", 1)[0]
    return None


def plan_retention(repo: Repo, policy: RetentionPolicy) -> RetentionPlan:
    """The mark phase: decide every commit's fate and mark every object that stays."""
    plan = RetentionPlan(sizes=object_sizes(repo))
    commits = load_commits(repo, plan.sizes)
    refs = {ref: commit for (_, ref), commit in repo.list_collection_refs().items()}

    def keep(commit: str, reason: str) -> None:
        if commit in commits:
            plan.full.setdefault(commit, [])
            if reason not in plan.full[commit]:
                plan.full[commit].append(reason)

    followed = _followed_refs(repo, refs, policy, commits)
    histories = {ref: _history(refs[ref], commits) for ref in refs}
    for ref, chain in histories.items():
        # Every ref's head stays, followed or not: a ref must never point at a pruned commit.
        if chain and not ref.startswith(PIN_REF_PREFIX):
            keep(chain[0], f"head of {ref}")
    for ref in followed:
        chain = histories.get(ref, [])
        for index, checksum in enumerate(chain):
            info = commits[checksum]
            if index < policy.keep_latest:
                keep(checksum, f"among the {policy.keep_latest} newest of {ref}")
            if info.checkpoint:
                keep(checksum, f"checkpoint on {ref}")
            if info.target:
                keep(checksum, f"checkpoint on {ref} (continue on {info.target})")
            if policy.now - info.timestamp < policy.keep_younger_than:
                keep(checksum, f"younger than keep_younger_than on {ref}")
    for ref, chain in histories.items():
        if ref.startswith(PIN_REF_PREFIX) and chain:
            keep(chain[0], f"pinned (ref {ref})")
    for pin in policy.pins:
        why = f"pinned: {pin.reason}" if pin.reason else "pinned"
        if pin.commit:
            for checksum in commits:
                if checksum.startswith(pin.commit):
                    keep(checksum, why)
        if pin.ref_glob:
            for ref, chain in histories.items():
                if fnmatch.fnmatchcase(ref, pin.ref_glob):
                    for checksum in chain:
                        keep(checksum, f"{why} ({pin.ref_glob})")
    for checksum in policy.leases:
        keep(checksum, "leased by a pull in progress")

    closures = _Closures(repo, plan.sizes)
    for checksum in plan.full:
        plan.marked.update(_commit_keys(checksum))
        plan.marked.update(closures.closure_to_mark(checksum, plan.marked))

    # The commit objects of each followed ref's whole held history stay (a few hundred bytes
    # each): a machine years behind finds its deployed commit by walking back from the head, and
    # every commit on the way must be there to tell whether it is a checkpoint.
    for ref in followed:
        for checksum in histories.get(ref, []):
            if checksum not in plan.full:
                plan.commit_only.setdefault(checksum, []).append(f"history of {ref}")

    # What is left may stay while it fits under max_size, most recently used first.
    candidates = [c for c in commits if c not in plan.full]
    candidates.sort(key=lambda c: policy.last_used.get(c, commits[c].timestamp), reverse=True)
    budget = policy.max_size
    used = plan.bytes_kept
    for checksum in candidates:
        commit_keys = [key for key in _commit_keys(checksum) if key not in plan.marked]
        left = None if budget is None else budget - used - sum(plan.sizes.get(k, 0) for k in commit_keys)
        extra_keys = (
            None if left is not None and left < 0 else closures.unmarked(checksum, plan.marked, budget=left)
        )
        if extra_keys is not None:
            extra_keys.update(commit_keys)
            extra = sum(plan.sizes.get(key, 0) for key in extra_keys)
            plan.full.setdefault(checksum, []).append("fits under max_size")
            plan.commit_only.pop(checksum, None)
            plan.marked.update(extra_keys)
            closures.forget(extra_keys)
            used += extra
        elif checksum not in plan.commit_only:
            plan.evicted.append(checksum)
    for checksum in list(plan.commit_only):
        plan.marked.update(_commit_keys(checksum))
        if not commits[checksum].complete:
            continue
        if closures.fully_marked(checksum, plan.marked):
            # Kept commits already hold its whole tree: it stays complete at no cost.
            plan.full[checksum] = ["its tree is shared with kept commits"]
            del plan.commit_only[checksum]
        else:
            plan.newly_partial.append(checksum)
    plan.marked &= set(plan.sizes)
    return plan


def _followed_refs(
    repo: Repo, refs: dict[str, str], policy: RetentionPolicy, commits: dict[str, CommitInfo]
) -> list[str]:
    """Followed refs plus every ref their checkpoint targets and sources lead to, transitively."""
    pending = list(policy.followed_refs) if policy.followed_refs is not None else list(refs)
    followed: list[str] = []
    while pending:
        ref = pending.pop(0)
        if ref in followed or ref.startswith(PIN_REF_PREFIX):
            continue
        followed.append(ref)
        head = refs.get(ref)
        if head is None:
            continue
        for checksum in _history(head, commits):
            target = commits[checksum].target
            if target:
                pending.append(target)
        source = _checkpoint_source(repo, head, commits)
        if source:
            pending.append(source)
    return followed


def pinned_refs(repo: Repo) -> Iterable[str]:
    """The refs under ``refs/heads/lanshare/pins/`` that mirror admin pins."""
    return [ref for ref in repo.list_refs() if ref.startswith(PIN_REF_PREFIX)]
