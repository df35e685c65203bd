"""Commit a directory tree into a repository, producing the same objects as ``ostree commit``."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lanshare.errors import Error
from lanshare.gvariant import Variant
from lanshare.ostree.content import CHUNK, FileHeader
from lanshare.ostree.objects import Commit, DirMeta, DirTree, ObjectType, Xattrs
from lanshare.ostree.repo import Repo, validate_ref

# Checkpoint metadata keys (DESIGN §3).
CHECKPOINT_KEY = "lanshare.checkpoint"
CHECKPOINT_TARGET_KEY = "eos.checkpoint-target"
ENDOFLIFE_REBASE_KEY = "ostree.endoflife-rebase"
CHECKPOINT_SOURCE_KEY = "lanshare.checkpoint-source"
REF_BINDING_KEY = "ostree.ref-binding"
COLLECTION_BINDING_KEY = "ostree.collection-binding"


class CommitError(Error):
    """The tree cannot be committed as asked."""


@dataclass
class CommitOptions:
    """What ``lanshare commit`` was asked to record besides the tree itself."""

    branch: str
    parent: str | None = None  # None: the branch's current head; "none": no parent
    timestamp: int | None = None
    subject: str = ""
    body: str = ""
    metadata: dict[str, Variant] = field(default_factory=dict)
    owner_uid: int | None = None
    owner_gid: int | None = None
    xattrs: bool = True
    bind_ref: bool = True


def _check_name(path: str, name: str) -> None:
    """OSTree file names are UTF-8 strings (GVariant ``s``); refuse others before they reach a dirtree."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise CommitError(f"{shown}: the file name is not valid UTF-8; OSTree cannot store it") from None


def _read_xattrs(path: str) -> Xattrs:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    # libostree stores each name as a NUL-terminated bytestring, sorted.
    return sorted((name.encode() + b"\0", os.getxattr(path, name, follow_symlinks=False)) for name in names)


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


@dataclass
class _PendingDir:
    """A scanned directory whose files are still being written by the pool."""

    meta: str
    files: list[tuple[str, Future[str]]] = field(default_factory=list)
    dirs: list[tuple[str, _PendingDir]] = field(default_factory=list)


class TreeWriter:
    """Writes the objects of a directory tree, compressing files on a small thread pool."""

    def __init__(self, repo: Repo, options: CommitOptions, workers: int | None = None) -> None:
        self.repo = repo
        self.options = options
        # zlib and hashlib release the GIL, so threads give real parallelism for file data.
        self.pool = ThreadPoolExecutor(max_workers=workers or min(4, (os.cpu_count() or 1) + 1))

    def _owner(self, st: os.stat_result) -> tuple[int, int]:
        uid = st.st_uid if self.options.owner_uid is None else self.options.owner_uid
        gid = st.st_gid if self.options.owner_gid is None else self.options.owner_gid
        return uid, gid

    def _xattrs(self, path: str) -> Xattrs:
        return _read_xattrs(path) if self.options.xattrs else []

    def _write_file(self, path: str, st: os.stat_result) -> str:
        uid, gid = self._owner(st)
        if stat.S_ISLNK(st.st_mode):
            header = FileHeader(uid, gid, st.st_mode, os.readlink(path), self._xattrs(path))
            return self.repo.write_content(header, iter(()))
        header = FileHeader(uid, gid, st.st_mode, "", self._xattrs(path), size=st.st_size)
        return self.repo.write_content(header, _file_chunks(path))

    def write_dir(self, path: str) -> tuple[str, str]:
        """Write a directory recursively; returns (dirtree checksum, dirmeta checksum)."""
        # Queue every file of the whole tree before waiting on any, so both cores stay busy even
        # when a directory holds a single large file.
        return self._finish(self._scan(path))

    def _scan(self, path: str) -> _PendingDir:
        st = os.lstat(path)
        uid, gid = self._owner(st)
        meta = DirMeta(uid, gid, st.st_mode, self._xattrs(path))
        pending = _PendingDir(self.repo.write_metadata(ObjectType.DIR_META, meta.to_bytes()))
        with os.scandir(path) as it:
            entries = list(it)
        for entry in entries:
            _check_name(entry.path, entry.name)
        entries.sort(key=lambda e: e.name.encode())
        for entry in entries:
            entry_st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(entry_st.st_mode):
                pending.dirs.append((entry.name, self._scan(entry.path)))
            elif stat.S_ISREG(entry_st.st_mode) or stat.S_ISLNK(entry_st.st_mode):
                pending.files.append((entry.name, self.pool.submit(self._write_file, entry.path, entry_st)))
            else:
                raise CommitError(f"{entry.path}: cannot commit a special file (device, FIFO or socket)")
        return pending

    def _finish(self, pending: _PendingDir) -> tuple[str, str]:
        dirs = [(name, *self._finish(child)) for name, child in pending.dirs]
        tree = DirTree([(name, future.result()) for name, future in pending.files], dirs)
        return self.repo.write_metadata(ObjectType.DIR_TREE, tree.to_bytes()), pending.meta

    def close(self) -> None:
        """Stop the worker threads."""
        self.pool.shutdown(wait=True)


def _bindings(repo: Repo, options: CommitOptions) -> dict[str, Variant]:
    # ostree commit binds a commit to its branch (and collection) unless --no-bindings.
    metadata = dict(options.metadata)
    if options.bind_ref:
        metadata.setdefault(REF_BINDING_KEY, Variant("as", [options.branch]))
        if repo.collection_id:
            metadata.setdefault(COLLECTION_BINDING_KEY, Variant("s", repo.collection_id))
    return metadata


def commit_tree(repo: Repo, tree: Path, options: CommitOptions) -> tuple[str, bytes]:
    """Commit ``tree`` on ``options.branch``; returns (checksum, commit bytes) and moves the ref."""
    validate_ref(options.branch)
    if not tree.is_dir():
        raise CommitError(f"{tree}: not a directory")
    if options.parent == "none":
        parent = None
    elif options.parent is not None:
        parent = repo.resolve_rev(options.parent)
    else:
        parent = repo.read_ref(options.branch)
    writer = TreeWriter(repo, options)
    try:
        root_tree, root_meta = writer.write_dir(str(tree))
    finally:
        writer.close()
    commit = Commit(
        root_tree=root_tree,
        root_meta=root_meta,
        timestamp=int(time.time()) if options.timestamp is None else options.timestamp,
        parent=parent,
        subject=options.subject,
        body=options.body,
        metadata=_bindings(repo, options),
    )
    data = commit.to_bytes()
    checksum = repo.write_metadata(ObjectType.COMMIT, data)
    return checksum, data
