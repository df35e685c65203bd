"""``POST /lanshare/v1/trees``: a commit's directory metadata in one response (:mod:`lanshare.wire`).

Without it a pull walks the tree one directory level at a time, a round trip per level (~20 ms
each on a LAN, most of a small pull's metadata phase).  Here the server walks the tree it holds,
breadth first, and streams every dirtree and dirmeta, parents before children, each once; whatever
the asker's ``base`` commit already has (a whole identical subtree, a shared dirmeta) is left out.
Objects are read beneath ``objects/`` without following symlinks, like batch objects; a dirtree
missing here or too big to batch just ends that branch — the asker fetches the rest as before.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import zstandard
from aiohttp import web

from lanshare import wire
from lanshare.errors import CorruptObject
from lanshare.ostree.objects import Commit, ObjectType, dirtree_checksums
from lanshare.server.batch import GROUP_BYTES, open_objects_dir, read_json_body, read_object, stream_groups
from lanshare.server.limits import LanLimits, PeerLedger

log = logging.getLogger(__name__)

_TREE, _META = ObjectType.DIR_TREE, ObjectType.DIR_META
# Smaller groups than a batch's: the asker stores dirtrees as they come (a pull waits on them), so
# the first ones should leave after a few dozen reads, not after the whole tree of a small commit.
TREE_GROUP_BYTES = GROUP_BYTES // 8


class TreeEncoder:
    """The compressed trees response for one commit, a group at a time (not thread-safe)."""

    def __init__(self, root: Path, commit: Commit, base: Commit | None) -> None:
        self._root = root
        self._commit = commit
        self._base = base
        self._compressor = wire.compressor().compressobj()
        self._records: Iterator[bytes] | None = None
        self._objects_fd = -1
        self._finished = False

    def next_group(self) -> bytes | None:
        """Compressed bytes for the next group of records (the end marker last); None when done."""
        if self._finished:
            return None
        out: list[bytes] = []
        if self._records is None:
            out.append(self._compressor.compress(wire.MAGIC))
            self._records = self._walk()
        raw, records = 0, []
        # Opened per group, as batches do: a response abandoned between groups holds no descriptor.
        self._objects_fd = open_objects_dir(self._root)
        try:
            for record in self._records:
                records.append(record)
                raw += len(record)
                if raw >= TREE_GROUP_BYTES:
                    break
            else:
                records.append(bytes([wire.END]))
                self._finished = True
        finally:
            os.close(self._objects_fd)
            self._objects_fd = -1
        out.append(self._compressor.compress(b"".join(records)))
        flush = zstandard.COMPRESSOBJ_FLUSH_FINISH if self._finished else zstandard.COMPRESSOBJ_FLUSH_BLOCK
        out.append(self._compressor.flush(flush))
        return b"".join(out)

    def _read(self, checksum: str, kind: ObjectType) -> bytes | None:
        data, _ = read_object(self._objects_fd, wire.ObjectName(checksum, kind))
        return data

    def _walk(self) -> Iterator[bytes]:
        """Records of the commit's tree, breadth first, skipping what the base's tree holds
        (read through the objects directory :meth:`next_group` opened for the current group)."""
        # What the base's tree holds counts as sent already.
        seen_trees, seen_metas = self._tree_of(self._base) if self._base is not None else (set(), set())
        pending = deque([(self._commit.root_tree, self._commit.root_meta)])
        while pending:
            tree, meta = pending.popleft()
            if meta not in seen_metas:
                seen_metas.add(meta)
                if (data := self._read(meta, _META)) is not None:
                    yield wire.encode_record(wire.ObjectName(meta, _META), data)
            if tree in seen_trees:
                continue
            seen_trees.add(tree)
            if (data := self._read(tree, _TREE)) is None:
                continue
            try:
                _, dirs = dirtree_checksums(data, f"{tree}.dirtree")
            except CorruptObject as e:  # verified when stored: the disk changed under us
                log.warning("trees of %s: %s", self._commit.root_tree, e)
                continue
            yield wire.encode_record(wire.ObjectName(tree, _TREE), data)
            pending.extend(dirs)

    def _tree_of(self, commit: Commit) -> tuple[set[str], set[str]]:
        """Every dirtree and dirmeta of ``commit``'s tree held here."""
        trees: set[str] = set()
        metas: set[str] = {commit.root_meta}
        pending = [commit.root_tree]
        while pending:
            tree = pending.pop()
            if tree in trees:
                continue
            if (data := self._read(tree, _TREE)) is None:
                continue
            try:
                _, dirs = dirtree_checksums(data, f"{tree}.dirtree")
            except CorruptObject:
                continue
            trees.add(tree)
            for sub_tree, sub_meta in dirs:
                pending.append(sub_tree)
                metas.add(sub_meta)
        return trees, metas


def _load_commit(root: Path, checksum: str) -> Commit | None:
    try:
        objects_fd = open_objects_dir(root)
    except OSError:
        return None
    try:
        data, _ = read_object(objects_fd, wire.ObjectName(checksum, ObjectType.COMMIT))
    finally:
        os.close(objects_fd)
    if data is None:
        return None
    try:
        return Commit.from_bytes(data, f"{checksum}.commit")
    except CorruptObject:
        return None


async def send_trees(
    request: web.Request, root: Path, limits: LanLimits, ledger: PeerLedger
) -> web.StreamResponse:
    """Answer a trees request: 404 when the commit is not held here."""
    try:
        commit_checksum, base_checksum = wire.parse_trees_request(await read_json_body(request, limits))
    except wire.WireError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    commit = _load_commit(root, commit_checksum)
    if commit is None:
        raise web.HTTPNotFound(text=f"{commit_checksum}.commit is not held here\n")
    base = _load_commit(root, base_checksum) if base_checksum is not None else None
    return await stream_groups(request, TreeEncoder(root, commit, base).next_group, ledger)
