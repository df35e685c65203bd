"""Generate a deterministic, many-ref OSTree archive history fast, straight through lanshare's Repo API.

The shape is what a LAN cache sees after two years of mirroring an OS vendor: ``refs`` refs of
``commits`` commits each (default 50 × 200, about 200,000 objects), written as objects directly
(content objects with :class:`FileHeader`, dirtrees, dirmetas and commits with ``write_metadata``)
instead of by committing trees from disk, which would take hours for 10,000 commits.

* A shared base tree (``base_files`` files in an OS-like directory layout, ~3% symlinks, a few
  private and sticky directories); every ref starts from it with a few ref-specific files.
* Each commit is an update of 1-4 "packages": 1-5 files changed in each touched directory (new
  small content objects), now and then a file added or removed, hence a new dirtree for every
  directory on the way up to the root.
* About 3% of commits are checkpoints (``lanshare.checkpoint`` b true).  A few refs end with a
  switch (``eos.checkpoint-target``) to a successor ref whose first commit names its source
  (``lanshare.checkpoint-source``), sometimes followed by an emergency fix on the old ref.
* Timestamps spread over two years before ``now``; some refs went stale months ago.
* Something for prune to delete: objects of "interrupted pulls" that no commit references, a few
  interrupted pulls that left a commit object marked ``.commitpartial`` with part of its tree,
  commits abandoned by force-pushes, and deleted refs whose commits are orphaned.

The same ``seed`` and ``now`` give byte-identical repositories.

    python -m bench.historygen REPO [--refs N] [--commits N] [--base-files N] [--seed S] [--now UNIX]
"""

from __future__ import annotations

import argparse
import os
import random
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.treegen import _WORDS, _make_dirs, _name
from lanshare.gvariant import Variant
from lanshare.ostree.content import FileHeader
from lanshare.ostree.objects import Commit, DirMeta, DirTree, ObjectType
from lanshare.ostree.repo import Repo

DAY = 86400
SPAN = 730 * DAY  # two years of history
DEFAULT_REFS = 50
DEFAULT_COMMITS = 200
DEFAULT_BASE_FILES = 3000

CHECKPOINT_RATE = 0.03
ABANDON_RATE = 0.01  # force-pushes: 1-3 commits built on the head, then dropped from the ref
GARBAGE_RATE = 0.04  # interrupted pulls that left objects but no commit
_PRODUCTS = ("eos", "kiosk", "edu", "lab", "media", "office", "retail", "signage", "thin", "core")
_CHANNELS = ("stable", "beta", "dev", "lts", "nightly")
_TEXT_EXT = (".conf", ".txt", ".py", ".h", ".sh", ".json", ".service", ".so", ".mo", "")
_CORPUS_SIZE = 256 * 1024


@dataclass
class HistoryStats:
    """What was generated; ``objects`` is counted on disk at the end."""

    refs: dict[str, str] = field(default_factory=dict)  # ref -> head
    commits_on_refs: int = 0
    checkpoints: int = 0
    switches: list[tuple[str, str]] = field(default_factory=list)  # (old ref, new ref)
    abandoned_commits: int = 0
    deleted_ref_commits: int = 0
    partial_commits: int = 0
    interrupted_pull_objects: int = 0
    objects: dict[str, int] = field(default_factory=dict)  # extension -> count
    object_bytes: int = 0
    oldest: int = 0
    newest: int = 0
    seconds: float = 0.0

    @property
    def total_objects(self) -> int:
        """Every object file in the repository."""
        return sum(self.objects.values())

    def describe(self) -> str:
        """A few lines for humans."""
        by_type = ", ".join(f"{n} {ext}" for ext, n in sorted(self.objects.items()))
        return "\n".join(
            [
                f"history: {len(self.refs)} refs, {self.commits_on_refs} commits on refs "
                f"({self.checkpoints} checkpoints, {len(self.switches)} ref switches), "
                f"{time.strftime('%Y-%m-%d', time.gmtime(self.oldest))} .. "
                f"{time.strftime('%Y-%m-%d', time.gmtime(self.newest))}",
                f"unreachable from refs: {self.abandoned_commits} force-pushed-away commits, "
                f"{self.deleted_ref_commits} commits of deleted refs, {self.partial_commits} "
                f"interrupted pulls with a .commitpartial commit, {self.interrupted_pull_objects} "
                "loose objects of interrupted pulls",
                f"objects: {self.total_objects} ({by_type}), {self.object_bytes / 1e6:.1f} MB "
                f"of object files; generated in {self.seconds:.1f} s",
            ]
        )


class _Node:
    """A directory: clean nodes (``checksum`` set) are shared between versions and never changed."""

    __slots__ = ("checksum", "dirs", "files", "meta")

    def __init__(self, files: dict[str, str], dirs: dict[str, _Node], meta: str) -> None:
        self.files = files
        self.dirs = dirs
        self.meta = meta
        self.checksum: str | None = None

    def thaw(self) -> _Node:
        """This node if it is already being edited, else an editable copy."""
        if self.checksum is None:
            return self
        return _Node(dict(self.files), dict(self.dirs), self.meta)


@dataclass
class _RefState:
    """A ref's current tree and head while its history is written."""

    root: _Node
    paths: list[tuple[tuple[str, ...], str]]  # regular files that updates may change
    head: str | None = None


class _Generator:
    def __init__(self, repo: Repo, rng: random.Random, stats: HistoryStats) -> None:
        self.repo = repo
        self.rng = rng
        self.stats = stats
        self.corpus = self._corpus()
        self.metas: dict[int, str] = {}
        self.counter = 0  # makes every generated file version unique
        self.writes = 0  # content and dirtree writes (all new: their bytes are unique)
        self.recorded: list[str] | None = None  # when set, new content objects are listed here

    def _corpus(self) -> bytes:
        lines: list[str] = []
        size = 0
        while size < _CORPUS_SIZE:
            line = " ".join(self.rng.choices(_WORDS, k=self.rng.randint(3, 12)))
            line += f" = {self.rng.randint(0, 9999)}\n"
            lines.append(line)
            size += len(line)
        return "".join(lines).encode()

    # -- objects ---------------------------------------------------------------------------

    def dirmeta(self, mode: int) -> str:
        if mode not in self.metas:
            meta = DirMeta(0, 0, stat.S_IFDIR | mode)
            self.metas[mode] = self.repo.write_metadata(ObjectType.DIR_META, meta.to_bytes())
        return self.metas[mode]

    def file(self, label: str) -> str:
        """A new small file version: a unique header line, then text or binary-looking bytes."""
        rng = self.rng
        self.counter += 1
        size = min(8192, int(rng.lognormvariate(6.0, 1.0)))
        if rng.random() < 0.2:
            body = rng.randbytes(size // 3) + bytes(size - size // 3)
        else:
            start = rng.randrange(len(self.corpus) - size)
            body = self.corpus[start : start + size]
        data = f"# {label} #{self.counter}\n".encode() + body
        mode = 0o755 if rng.random() < 0.1 else 0o644
        header = FileHeader(0, 0, stat.S_IFREG | mode, size=len(data))
        self.writes += 1
        checksum = self.repo.write_content(header, [data])
        if self.recorded is not None:
            self.recorded.append(checksum)
        return checksum

    def symlink(self, target: str) -> str:
        header = FileHeader(0, 0, stat.S_IFLNK | 0o777, symlink_target=target)
        self.writes += 1
        return self.repo.write_content(header, iter(()))

    def flush(self, node: _Node) -> str:
        """Write every directory changed since the last flush (bottom up); returns the root's name."""
        if node.checksum is None:
            dirs = [(name, self.flush(child), child.meta) for name, child in node.dirs.items()]
            tree = DirTree(list(node.files.items()), dirs)
            self.writes += 1
            node.checksum = self.repo.write_metadata(ObjectType.DIR_TREE, tree.to_bytes())
        return node.checksum

    def commit(
        self, state: _RefState, ref: str, when: int, version: str, metadata: dict[str, Variant]
    ) -> str:
        root = self.flush(state.root)
        meta = {
            "version": Variant("s", version),
            "ostree.ref-binding": Variant("as", [ref]),
            **metadata,
        }
        commit = Commit(
            root_tree=root,
            root_meta=state.root.meta,
            timestamp=when,
            parent=state.head,
            subject=f"{ref} {version}",
            metadata=meta,
        )
        checksum = self.repo.write_metadata(ObjectType.COMMIT, commit.to_bytes())
        state.head = checksum
        self.stats.oldest = min(self.stats.oldest or when, when)
        self.stats.newest = max(self.stats.newest, when)
        return checksum

    # -- trees -----------------------------------------------------------------------------

    def base(self, n_files: int) -> _RefState:
        """The tree every ref starts from (its objects are written by the first commit)."""
        rng = self.rng
        dirs = _make_dirs(rng, max(20, n_files // 12), 6)
        root = _Node({}, {}, self.dirmeta(0o755))
        nodes: dict[tuple[str, ...], _Node] = {(): root}
        for d in dirs:
            parts = tuple(d.split("/"))
            for i in range(1, len(parts) + 1):
                if parts[:i] not in nodes:
                    r = rng.random()
                    mode = 0o700 if r < 0.02 else 0o1777 if r < 0.03 else 0o755
                    nodes[parts[:i]] = node = _Node({}, {}, self.dirmeta(mode))
                    nodes[parts[: i - 1]].dirs[parts[i - 1]] = node
        where = sorted(nodes)
        paths: list[tuple[tuple[str, ...], str]] = []
        n_symlinks = n_files * 3 // 100
        for i in range(n_files):
            parts = rng.choice(where)
            node = nodes[parts]
            symlink = i < n_symlinks
            name = _name(rng) + (".link" if symlink else rng.choice(_TEXT_EXT))
            if name in node.files or name in node.dirs:
                continue
            if symlink:
                node.files[name] = self.symlink(f"/usr/lib/{_name(rng)}.so.{rng.randint(0, 9)}")
            else:
                node.files[name] = self.file("base/" + "/".join((*parts, name)))
                paths.append((parts, name))
        return _RefState(root, paths)

    def update(self, state: _RefState, label: str) -> None:
        """Apply one update to ``state`` (new content objects; dirtrees are written on flush)."""
        rng = self.rng
        for _ in range(rng.choice((1, 2, 2, 3, 3, 4))):
            parts, _ = rng.choice(state.paths)
            state.root = root = state.root.thaw()
            node = root
            for p in parts:
                node.dirs[p] = node = node.dirs[p].thaw()
            regular = [n for n in node.files if not n.endswith(".link")]
            for name in rng.sample(regular, min(len(regular), rng.randint(1, 5))):
                node.files[name] = self.file(f"{label}/{'/'.join(parts)}/{name}")
            r = rng.random()
            if r < 0.05:
                name = _name(rng) + rng.choice(_TEXT_EXT)
                if name not in node.files and name not in node.dirs:
                    node.files[name] = self.file(f"{label}/{'/'.join(parts)}/{name}")
                    state.paths.append((parts, name))
            elif r < 0.07 and len(regular) > 1:
                name = rng.choice(regular)
                del node.files[name]
                state.paths.remove((parts, name))

    def fork(self, state: _RefState) -> _RefState:
        """A copy of ``state`` that can diverge without touching it (its tree must be flushed)."""
        self.flush(state.root)
        return _RefState(state.root, list(state.paths), state.head)

    # -- what prune should delete ----------------------------------------------------------

    def interrupted_pull(self, state: _RefState, label: str) -> None:
        """Objects of an update whose commit object never arrived: referenced by nothing."""
        before = self.writes
        scratch = self.fork(state)
        self.update(scratch, label)
        self.flush(scratch.root)
        self.stats.interrupted_pull_objects += self.writes - before

    def partial_pull(self, state: _RefState, ref: str, when: int) -> None:
        """An interrupted pull that got the commit object and part of its tree: ``.commitpartial``."""
        scratch = self.fork(state)
        written: list[str] = []
        self.recorded = written
        self.update(scratch, f"{ref}/partial")
        self.update(scratch, f"{ref}/partial")
        self.recorded = None
        commit = self.commit(scratch, ref, when, "partial", {})
        self.repo.mark_partial(commit)
        for checksum in written[::2]:  # what the pull had not fetched yet
            self.repo.object_path(checksum, ObjectType.FILE).unlink()
        self.stats.partial_commits += 1

    def abandoned(self, state: _RefState, ref: str, when: int) -> None:
        """A force-push: 1-3 commits on the head that the ref no longer reaches."""
        scratch = self.fork(state)
        for n in range(self.rng.randint(1, 3)):
            self.update(scratch, f"{ref}/abandoned")
            self.commit(scratch, ref, when + n * 600, f"abandoned-{n}", {})
            self.stats.abandoned_commits += 1


def _times(rng: random.Random, n: int, start: int, end: int) -> list[int]:
    """``n`` distinct increasing timestamps in [start, end]."""
    times = sorted(rng.randrange(start, max(start + 1, end)) for _ in range(n))
    for i in range(1, n):
        times[i] = max(times[i], times[i - 1] + 1)
    return times


def _ref_names(n: int) -> list[str]:
    names = []
    for i in range(n):
        product, channel = _PRODUCTS[i % len(_PRODUCTS)], _CHANNELS[(i // len(_PRODUCTS)) % len(_CHANNELS)]
        generation = i // (len(_PRODUCTS) * len(_CHANNELS))
        names.append(f"os/{product}/{channel}" + (f"{generation + 1}" if generation else ""))
    return names


def generate_history(
    path: Path,
    refs: int = DEFAULT_REFS,
    commits: int = DEFAULT_COMMITS,
    base_files: int = DEFAULT_BASE_FILES,
    seed: int = 0,
    now: int | None = None,
) -> HistoryStats:
    """Write the repository at ``path`` (must not exist) and return its stats.

    ``now`` (Unix time) ends the two-year span; it defaults to today's midnight UTC, so runs on the
    same day are identical and the newest commits are younger than any ``keep_younger_than``.
    """
    if refs < 1 or commits < 2:
        raise ValueError("need at least one ref and two commits per ref")
    if path.exists():
        raise FileExistsError(f"{path}: already exists")
    started = time.perf_counter()
    now = int(time.time()) // DAY * DAY if now is None else now
    rng = random.Random(seed)
    stats = HistoryStats()
    repo = Repo.init(path)
    gen = _Generator(repo, rng, stats)
    base = gen.base(base_files)
    gen.flush(base.root)

    # The last n_switch refs are successors of earlier refs that end with a checkpoint target.
    n_switch = min(refs // 2, max(1, refs // 10)) if refs >= 2 else 0
    names = _ref_names(refs - n_switch)
    olds = rng.sample(range(len(names)), n_switch)
    successors = {old: f"{names[old]}-v2" for old in olds}
    switch_points: dict[str, tuple[str, int, _RefState]] = {}  # new ref -> (old@commit, time, tree)
    successor_of = {names[old]: new for old, new in successors.items()}
    order = [(name, False) for name in names] + [(successors[old], True) for old in olds]
    # A few refs that existed once and were deleted: their commits are orphaned.
    deleted = [
        (f"os/{_PRODUCTS[i % len(_PRODUCTS)]}/experimental{i}", False) for i in range(max(1, refs // 25))
    ]

    for index, (ref, is_successor) in enumerate(order + deleted):
        is_deleted = index >= len(order)
        n_commits = max(2, commits // 5) if is_deleted else commits
        if is_successor:
            source, switched_at, from_state = switch_points[ref]
            state = gen.fork(from_state)
            state.head = None
            start, end = switched_at + 3600, now - rng.randrange(0, 5 * DAY)
        else:
            state = gen.fork(base)
            for _ in range(rng.randint(5, 15)):  # this ref's flavour of the base
                gen.update(state, f"{ref}/flavour")
            start = now - SPAN + rng.randrange(0, 60 * DAY)
            stale = rng.random() < 0.2 or is_deleted
            end = now - (rng.randrange(100 * DAY, 300 * DAY) if stale else rng.randrange(0, 5 * DAY))
        switch_to = successor_of.get(ref)
        fixes = rng.randint(0, 2) if switch_to else 0
        switch_index = n_commits - 1 - fixes
        if switch_to:
            switched_at = end - rng.randrange(200 * DAY, 400 * DAY)
            times = _times(rng, switch_index + 1, start, switched_at)
            times += _times(rng, fixes, switched_at + DAY, switched_at + 30 * DAY)
        else:
            times = _times(rng, n_commits, start, end)
        for n, when in enumerate(times):
            label = f"{ref}/{n}"
            if n:
                gen.update(state, label)
            metadata: dict[str, Variant] = {}
            if n == 0 and is_successor:
                metadata["lanshare.checkpoint-source"] = Variant("s", source)
            if switch_to and n == switch_index:
                metadata["eos.checkpoint-target"] = Variant("s", switch_to)
            elif n and rng.random() < CHECKPOINT_RATE:
                metadata["lanshare.checkpoint"] = Variant("b", True)
                stats.checkpoints += not is_deleted
            commit = gen.commit(state, ref, when, f"{n + 1}", metadata)
            if switch_to and n == switch_index:
                switch_points[switch_to] = (f"{ref}@{commit}", when, gen.fork(state))
                stats.switches.append((ref, switch_to))
            if is_deleted:
                stats.deleted_ref_commits += 1
                continue
            stats.commits_on_refs += 1
            r = rng.random()
            if r < ABANDON_RATE:
                gen.abandoned(state, ref, when + 60)
            elif r < ABANDON_RATE + GARBAGE_RATE:
                gen.interrupted_pull(state, f"{ref}/interrupted{n}")
        if not is_deleted:
            assert state.head is not None
            stats.refs[ref] = state.head
            if index % max(1, len(order) // 3) == 0:
                gen.partial_pull(state, ref, min(now, times[-1] + DAY))
    for ref, head in sorted(stats.refs.items()):
        repo.write_ref(ref, head)  # syncs every object written before it

    counts: Counter[str] = Counter()
    for _, kind, object_path in repo.iter_objects():
        counts[kind.value] += 1
        stats.object_bytes += object_path.stat().st_size
    stats.objects = dict(sorted(counts.items()))
    stats.seconds = time.perf_counter() - started
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: generate a repository and print its stats."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repo", type=Path, help="repository to create (must not exist)")
    parser.add_argument("--refs", type=int, default=DEFAULT_REFS)
    parser.add_argument("--commits", type=int, default=DEFAULT_COMMITS, help="commits per ref")
    parser.add_argument("--base-files", type=int, default=DEFAULT_BASE_FILES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--now", type=int, help="end of the history, Unix time (default: today 00:00 UTC)")
    args = parser.parse_args(argv)
    stats = generate_history(args.repo, args.refs, args.commits, args.base_files, args.seed, args.now)
    print(stats.describe())
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
