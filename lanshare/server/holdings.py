"""What this node holds (``GET /lanshare/v1/info``), recomputed only when its refs change.

Held commits are found by walking parent links from every ref, lanshare's private pin refs
included (a pinned checkpoint is exactly what a peer may need), while the refs *advertised* leave
the private ones out.  The holdings digest is the SHA-256 of a canonical JSON listing (collection
id, advertised refs, and each held commit with whether its closure is complete), short enough for
an mDNS TXT record and equal on two nodes exactly when they advertise the same holdings.

``fetching`` lists the commits a pull on this machine (the daemon's or a command's) is bringing in
right now: partial here and leased in the index.  Peers pulling the same commit split its objects
with this node (:mod:`lanshare.pull.fleet`); it is part of the digest, so the TXT changes with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from lanshare import wire
from lanshare.errors import CorruptObject, MissingObject
from lanshare.index.models import Transfer, TransferState
from lanshare.index.sync import active_leases
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import PRIVATE_REF_PREFIX
from lanshare.update_path import CommitInfo

# Guards the parent walk against a looping or absurdly long history.
MAX_COMMITS = 100_000

Fingerprint = tuple[object, ...]


def _canonical(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def holdings_digest(
    collection_id: str | None,
    refs: dict[str, str],
    mirrors: dict[str, dict[str, str]],
    complete: dict[str, bool],
    fetching: Iterable[str] = (),
) -> str:
    """SHA-256 (hex) of the canonical listing the ``holdings_digest`` field summarises."""
    listing: dict[str, object] = {
        "collection_id": collection_id,
        "refs": refs,
        "mirrors": mirrors,
        "commits": complete,
    }
    if fetching := sorted(fetching):
        listing["fetching"] = fetching  # absent when empty: digests of idle nodes are unchanged
    return hashlib.sha256(_canonical(listing)).hexdigest()


def _held_commits(repo: Repo, roots: list[str]) -> dict[str, CommitInfo]:
    partial = repo.partial_commits()
    held: dict[str, CommitInfo] = {}
    stack = sorted(set(roots), reverse=True)
    while stack and len(held) < MAX_COMMITS:
        checksum = stack.pop()
        if checksum in held:
            continue
        try:
            commit = repo.load_commit(checksum)
        except (MissingObject, CorruptObject):
            continue
        complete = (
            checksum not in partial
            and repo.has_object(commit.root_tree, ObjectType.DIR_TREE)
            and repo.has_object(commit.root_meta, ObjectType.DIR_META)
        )
        held[checksum] = CommitInfo.from_commit(checksum, commit, complete=complete)
        if commit.parent is not None:
            stack.append(commit.parent)
    return held


def _generations(held: dict[str, CommitInfo]) -> dict[str, int]:
    """How many held ancestors each commit has (a parent always ranks below its child)."""
    generation: dict[str, int] = {}
    for checksum in held:
        chain = []
        current: str | None = checksum
        while current is not None and current in held and current not in generation:
            chain.append(current)
            current = held[current].parent
        base = generation.get(current, -1) if current is not None else -1
        for offset, commit in enumerate(reversed(chain), start=1):
            generation[commit] = base + offset
    return generation


# The info document reports where the bytes of this many recent pulls came from.
RECENT_PULLS = 8


def recent_pulls(engine: Engine, limit: int = RECENT_PULLS) -> dict[str, dict[str, int]]:
    """Commit -> {"origin": bytes, "peers": bytes} of the newest finished pulls (blocking)."""
    with Session(engine) as session:
        rows = session.scalars(
            select(Transfer)
            # A pull records its split before it moves the ref (and so changes this document).
            .where(Transfer.state != TransferState.FAILED, Transfer.bytes_origin + Transfer.bytes_peers > 0)
            .order_by(Transfer.id.desc())
            .limit(limit)
        )
        pulled: dict[str, dict[str, int]] = {}
        for t in rows:
            counts = pulled.setdefault(t.commit, {"origin": 0, "peers": 0})
            counts["origin"] += t.bytes_origin
            counts["peers"] += t.bytes_peers
        return pulled


def compute_info(
    repo: Repo,
    node_id: str,
    leased: Iterable[str] | None = None,
    pulled: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """The info document (blocking: reads refs and commit objects).

    ``leased``: the commits pulls in progress hold leases on (the index's), or None without one;
    ``pulled``: where the bytes of recent pulls came from (:func:`recent_pulls`).
    """
    heads = repo.list_refs()
    fetching = sorted(repo.partial_commits() & set(leased)) if leased is not None else []
    mirror_refs = repo.list_mirror_refs()
    refs = {name: c for name, c in heads.items() if not name.startswith(PRIVATE_REF_PREFIX)}
    mirrors: dict[str, dict[str, str]] = {}
    for (collection_id, name), commit in mirror_refs.items():
        if not name.startswith(PRIVATE_REF_PREFIX):
            mirrors.setdefault(collection_id, {})[name] = commit
    held = _held_commits(repo, [*heads.values(), *mirror_refs.values()])
    generation = _generations(held)
    # Oldest first; commits made within one second are ordered by their place in the history.
    checkpoints = sorted(
        (i for i in held.values() if i.is_checkpoint),
        key=lambda i: (i.timestamp, generation[i.checksum], i.checksum),
    )
    return {
        "protocol": wire.VERSION,
        "features": [wire.TREES_FEATURE],
        "node_id": node_id,
        "collection_id": repo.collection_id,
        "refs": refs,
        "mirrors": mirrors,
        "commits": {
            c: {
                "parent": i.parent,
                "timestamp": i.timestamp,
                "version": i.version,
                "complete": i.complete,
                "checkpoint": i.is_checkpoint,
                "checkpoint_target": i.target,
            }
            for c, i in sorted(held.items())
        },
        "checkpoints": [i.checksum for i in checkpoints],
        "newest_checkpoint": checkpoints[-1].checksum if checkpoints else None,
        "fetching": fetching,
        "pulled": pulled or {},
        "holdings_digest": holdings_digest(
            repo.collection_id, refs, mirrors, {c: i.complete for c, i in held.items()}, fetching
        ),
    }


def refs_fingerprint(repo: Repo) -> Fingerprint:
    """Changes whenever a ref or a commitpartial marker is added, moved or removed."""
    entries: list[object] = []
    for base in (repo.path / "refs" / "heads", repo.path / "refs" / "mirrors"):
        for root, _, files in os.walk(base):
            for name in [".", *files]:
                try:
                    st = os.stat(os.path.join(root, name), follow_symlinks=False)
                except FileNotFoundError:
                    entries.append((root, name, None))
                    continue
                # A ref moves by rename: a new inode even when the mtime tick is the same.
                entries.append((root, name, st.st_ino, st.st_mtime_ns, st.st_size))
    try:
        markers = sorted(n for n in os.listdir(repo.state_dir) if n.endswith(".commitpartial"))
    except FileNotFoundError:
        markers = []
    entries.append(tuple(markers))
    return tuple(entries)


@dataclass(frozen=True)
class HoldingsSnapshot:
    """One computed info document, as data and as the JSON bytes served."""

    info: dict[str, Any]
    body: bytes

    @property
    def digest(self) -> str:
        """The holdings digest (for the mDNS TXT record)."""
        return str(self.info["holdings_digest"])


class Holdings:
    """The cached info document of one repository."""

    def __init__(self, repo: Repo, node_id: str, max_age: float = 60.0) -> None:
        self.repo = repo
        self.node_id = node_id
        # The daemon's index: its leases announce what this node fetches, its transfers where
        # recent pulls got their bytes (lanshare.pull.fleet).
        self.engine: Engine | None = None
        # Recompute at least this often: prune can remove commits without touching any ref.
        self.max_age = max_age
        self._snapshot: HoldingsSnapshot | None = None
        self._fingerprint: Fingerprint | None = None
        self._computed_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Recompute on the next request (call after moving refs in this process)."""
        self._fingerprint = None

    async def snapshot(self) -> HoldingsSnapshot:
        """The current document; recomputed in a worker thread only when something changed."""
        loop = asyncio.get_running_loop()
        fingerprint = await loop.run_in_executor(None, self._fingerprint_now)
        if self._fresh(fingerprint):
            assert self._snapshot is not None
            return self._snapshot
        async with self._lock:
            if self._fresh(fingerprint):
                assert self._snapshot is not None
                return self._snapshot
            computed_at = time.monotonic()
            leased = fingerprint[-1]
            assert leased is None or isinstance(leased, frozenset)
            info = await loop.run_in_executor(None, self._compute, leased)
            self._snapshot = HoldingsSnapshot(info, _canonical(info))
            # The fingerprint taken before computing: a change made meanwhile triggers another pass.
            self._fingerprint = fingerprint
            self._computed_at = computed_at
            return self._snapshot

    def _compute(self, leased: frozenset[str] | None) -> dict[str, Any]:
        pulled = None
        if self.engine is not None:
            try:
                pulled = recent_pulls(self.engine)
            except SQLAlchemyError:  # only a report: the document goes out without it
                pulled = None
        return compute_info(self.repo, self.node_id, leased, pulled)

    def _fingerprint_now(self) -> Fingerprint:
        """The refs' fingerprint, ending with the leased commits while a commit is partial here
        (a pull that resumes a partial commit changes no marker, only the leases)."""
        fingerprint = refs_fingerprint(self.repo)
        leased: frozenset[str] | None = None
        if self.engine is not None and fingerprint[-1]:
            try:
                leased = frozenset(active_leases(self.engine))
            except SQLAlchemyError:  # the index only adds the "fetching" hint: never fail the document
                leased = None
        return (*fingerprint, leased)

    def _fresh(self, fingerprint: Fingerprint) -> bool:
        return (
            self._snapshot is not None
            and fingerprint == self._fingerprint
            and time.monotonic() - self._computed_at < self.max_age
        )
