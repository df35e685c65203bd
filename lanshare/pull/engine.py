"""The pull engine: bring a commit and its whole closure into the repository, verified, from any source.

Order of work (DESIGN §2, §6):

1. Ask every source where the ref points; fetch each candidate commit and its ``.commitmeta``,
   verify it (:mod:`lanshare.pull.verify`) and keep the newest that passes.
2. Under the repository's shared lock, with a lease in the index: mark the commit
   ``.commitpartial``, store it, walk its dirtrees level by level fetching only missing
   metadata, then fetch every missing content object in parallel.
3. Once the closure is complete: sync, clear the partial marker, move the ref.

Every object is verified before it becomes visible, so an interrupted pull leaves only good
objects behind and the next run fetches just what is missing.  Each object is tried on the sources
in order; a source that fails is abandoned for the rest of the pull and the next one serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import aiohttp
from sqlalchemy import Engine

from lanshare import wire
from lanshare.errors import CorruptObject, Error, MissingObject, UsageError
from lanshare.ostree.objects import Commit, ObjectType, is_checksum
from lanshare.ostree.repo import Repo, validate_ref
from lanshare.progress import Phase, ProgressCallback, ProgressUpdate
from lanshare.pull.errors import CommitRejected, LocalWriteError, PullError, SourceFailure
from lanshare.pull.fleet import Fleet, FleetOptions
from lanshare.pull.http import Timeouts
from lanshare.pull.pipeline import StorePipeline
from lanshare.pull.records import PeerKey, Recorder
from lanshare.pull.sources import (
    DirTreeListing,
    PeerSource,
    PlanEntry,
    ReceivedTrees,
    Source,
    expand_plan,
    open_sources,
    run_workers,
    why_no_sources,
)
from lanshare.pull.upstream import keep_upstream_summary
from lanshare.pull.verify import TrustPolicy, VerifiedCommit, check_not_older, verify_commit
from lanshare.wire import MAX_BATCH_OBJECTS, ObjectName

log = logging.getLogger(__name__)

# A fetch of at least this many objects is dealt out to every peer holding the whole commit.
SPREAD_MIN_OBJECTS = 64
# How far back a tie between equal timestamps is resolved through parents.
_TIE_BREAK_DEPTH = 10_000
_SPREAD_MIN_BATCH = 16


@dataclass(frozen=True)
class PullOptions:
    """How a pull behaves: trust, parallelism and patience."""

    trust: TrustPolicy = field(default_factory=TrustPolicy)
    parallel: int = 8
    timeouts: Timeouts = field(default_factory=Timeouts)
    # This node's place among LAN machines pulling the same commit (lanshare.pull.fleet); None:
    # fetch alone (no node id, or ``[pull] coordinate = false``).
    fleet: FleetOptions | None = None


@dataclass
class SourceStats:
    """What one source contributed to a pull."""

    objects: int = 0
    bytes: int = 0


@dataclass
class PullResult:
    """The outcome of a successful pull."""

    commit: str
    ref: str | None
    previous: str | None
    up_to_date: bool
    signed_by: str | None
    objects_fetched: int
    bytes_fetched: int
    duration: float
    sources: dict[str, SourceStats]
    abandoned: dict[str, str]  # source → why it was dropped during this pull
    rejected: list[str]  # commits offered for the ref that failed a check, with the reason

    def to_json(self) -> dict[str, Any]:
        """The ``lanshare pull --json`` document."""
        return {
            "commit": self.commit,
            "ref": self.ref,
            "previous": self.previous,
            "up_to_date": self.up_to_date,
            "signed_by": self.signed_by,
            "objects_fetched": self.objects_fetched,
            "bytes_fetched": self.bytes_fetched,
            "duration_seconds": round(self.duration, 3),
            "sources": {name: {"objects": s.objects, "bytes": s.bytes} for name, s in self.sources.items()},
            "abandoned_sources": self.abandoned,
            "rejected_commits": self.rejected,
        }


async def pull(
    repo: Repo,
    target: str,
    plan: Iterable[PlanEntry],
    *,
    ref: str | None = None,
    options: PullOptions | None = None,
    index: Engine | None = None,
    progress: ProgressCallback | None = None,
) -> PullResult:
    """Pull ``target`` (a ref, or a commit checksum with an optional ``ref`` to move) into ``repo``.

    ``index`` is an SQLAlchemy engine for the lease, transfer and peer rows, or None.
    """
    return await _Pull(repo, options or PullOptions(), Recorder(index), progress).run(target, plan, ref)


class _Pull:
    """The state of one pull."""

    def __init__(
        self, repo: Repo, options: PullOptions, recorder: Recorder, progress: ProgressCallback | None
    ) -> None:
        self.repo = repo
        self.options = options
        self.recorder = recorder
        self.progress = progress
        self.sources: list[Source] = []
        self.stats: dict[str, SourceStats] = {}
        self.phase: Phase = "metadata"
        self.objects_done = 0
        self.objects_total: int | None = None
        self.bytes_done = 0
        self.checksum = ""  # the commit being pulled, once chosen
        self.partial_marked = False
        self.rejected: list[str] = []
        self.backing_off: set[Source] = set()
        self.pipeline = StorePipeline(repo)
        self.fleet: Fleet | None = None
        self.ref: str | None = None  # the ref being moved, once the transaction starts
        self.fleet_checked = False

    # -- the whole pull --------------------------------------------------------------------

    async def run(self, target: str, plan: Iterable[PlanEntry], ref: str | None) -> PullResult:
        """Resolve, verify, fetch and commit; raises PullError naming what failed."""
        started = time.monotonic()
        if not is_checksum(target):
            validate_ref(target)
            if ref is not None and ref != target:
                raise UsageError(f"--ref {ref} does not match the ref being pulled ({target})")
            ref = target
        elif ref is not None:
            validate_ref(ref)
        plan = list(plan)
        specs = expand_plan(plan)
        if not specs:
            raise UsageError(f"nothing to pull from: {why_no_sources(plan)}")
        timeouts = self.options.timeouts
        parallel = self.options.parallel
        connector = aiohttp.TCPConnector(limit=parallel * 2, limit_per_host=parallel)
        async with aiohttp.ClientSession(timeout=timeouts.client_timeout(), connector=connector) as session:
            try:
                self.sources = await open_sources(session, specs, timeouts, self.repo.tmp_dir)
                await self._prepare_sources()
                head = self.repo.read_ref(ref) if ref is not None else None
                chosen = await self._choose(target, ref, head)
                self._prefer_holders(chosen.checksum)
                up_to_date = await asyncio.to_thread(self._is_complete, chosen.checksum) and (
                    ref is None or head == chosen.checksum
                )
                if not up_to_date:
                    await self._transaction(chosen, ref)
                await self._credit_peers(time.monotonic() - started)
                # Keep the source's summary set, to serve it on byte for byte (DESIGN §5c).
                await keep_upstream_summary(self.repo, self.sources, ref, chosen.checksum, self.options.trust)
            except (OSError, LocalWriteError) as e:
                raise self._storage_error(e) from None
            finally:
                await self.pipeline.close()
                # Demotions are recorded even when the pull fails before it stores anything.
                await self.recorder.drain()
        return PullResult(
            commit=chosen.checksum,
            ref=ref,
            previous=head,
            up_to_date=up_to_date,
            signed_by=chosen.signed_by,
            objects_fetched=self.objects_done,
            bytes_fetched=self.bytes_done,
            duration=time.monotonic() - started,
            sources={name: s for name, s in self.stats.items() if s.objects},
            abandoned={s.name: s.failure for s in self.sources if s.failure is not None},
            rejected=self.rejected,
        )

    def _storage_error(self, error: OSError | LocalWriteError) -> LocalWriteError:
        """One line for a write this machine could not make (a full disk, most often)."""
        reason = str(error)
        if isinstance(error, OSError):
            reason = (
                f"{error.filename}: {error.strerror}" if error.filename and error.strerror else str(error)
            )
        return LocalWriteError(
            f"cannot store the pull in {self.repo.path}: {reason} ({self.objects_done} objects stored "
            "and kept; free some space, then pull again to continue)"
        )

    async def _prepare_sources(self) -> None:
        """Hook up demotion, and try peers still backing off from earlier failures last."""
        late: list[Source] = []
        for source in self.sources:
            source.on_abandon = self._abandoned
            if source.kind == "peer" and source.failure is not None:
                self.recorder.peer_failed(PeerKey.of(source.node_id, source.url))
            elif source.kind == "peer":
                until = await self.recorder.backoff_until(PeerKey.of(source.node_id, source.url))
                if until is not None and until.timestamp() > time.time():
                    late.append(source)
        self.sources = [s for s in self.sources if s not in late] + late
        self.backing_off = set(late)

    def _prefer_holders(self, checksum: str) -> None:
        """Among the peers not backing off, those holding the whole commit go first (stable)."""
        slots = [i for i, s in enumerate(self.sources) if s.kind == "peer" and s not in self.backing_off]
        ranked = sorted((self.sources[i] for i in slots), key=lambda s: not s.holds_complete(checksum))
        for slot, source in zip(slots, ranked, strict=True):
            self.sources[slot] = source

    def _abandoned(self, source: Source, reason: str, bad_data: bool) -> None:
        log.info("%s: not used any more in this pull: %s", source.name, reason)
        if source.kind == "peer":
            self.recorder.peer_failed(PeerKey.of(source.node_id, source.url))

    async def _credit_peers(self, duration: float) -> None:
        for source in self.sources:
            stats = self.stats.get(source.name)
            if source.kind == "peer" and source.usable and stats is not None and stats.objects:
                rate = stats.bytes / duration if duration > 0 else None
                await self.recorder.peer_served(PeerKey.of(source.node_id, source.url), stats.bytes, rate)

    def _is_complete(self, checksum: str) -> bool:
        return self.repo.has_object(checksum, ObjectType.COMMIT) and not self.repo.is_partial(checksum)

    # -- choosing the commit ---------------------------------------------------------------

    async def _choose(self, target: str, ref: str | None, head: str | None) -> VerifiedCommit:
        """The commit to pull: the newest candidate that passes every check."""
        head_info = None
        if head is not None and self.repo.has_object(head, ObjectType.COMMIT):
            head_info = (head, self.repo.load_commit(head))
        if is_checksum(target):
            candidates: list[tuple[str, Source | None]] = [(target, None)]
        else:
            candidates = await self._claims(target)
        accepted: list[VerifiedCommit] = []
        for checksum, claimer in candidates:
            try:
                accepted.append(await self._verify_candidate(checksum, claimer, ref, head_info))
            except CommitRejected as e:
                by = f" (offered by {claimer.name})" if claimer is not None else ""
                self.rejected.append(f"{checksum}{by}: {e}")
        if not accepted:
            what = f"ref {ref}" if ref is not None and not is_checksum(target) else f"commit {target}"
            raise PullError(f"no acceptable commit for {what}: " + "; ".join(self.rejected))
        return self._newest(accepted)

    def _newest(self, accepted: list[VerifiedCommit]) -> VerifiedCommit:
        """The newest candidate by timestamp; among equal timestamps (commits made within one
        second), the one the others are ancestors of, so the tie never picks an older commit."""
        newest = max(v.commit.timestamp for v in accepted)
        tied = [v for v in accepted if v.commit.timestamp == newest]
        known = {v.checksum: v.commit.parent for v in accepted}

        def parent_of(checksum: str) -> str | None:
            if checksum in known:
                return known[checksum]
            if self.repo.has_object(checksum, ObjectType.COMMIT):
                with suppress(Error):
                    return self.repo.load_commit(checksum, verify=False).parent
            return None

        def ancestors(checksum: str) -> set[str]:
            found: set[str] = set()
            parent = parent_of(checksum)
            while parent is not None and parent not in found and len(found) < _TIE_BREAK_DEPTH:
                found.add(parent)
                parent = parent_of(parent)
            return found

        older = set().union(*(ancestors(v.checksum) for v in tied)) if len(tied) > 1 else set()
        return next((v for v in tied if v.checksum not in older), tied[0])

    async def _claims(self, ref: str) -> list[tuple[str, Source | None]]:
        """Each distinct commit the sources name for ``ref``, in source order."""
        usable = [s for s in self.sources if s.usable]

        async def ask(source: Source) -> str | None:
            try:
                return await source.resolve_ref(ref)
            except SourceFailure as e:
                source.abandon(e.reason, bad_data=e.bad_data)
                return None

        answers = await asyncio.gather(*(ask(s) for s in usable))
        claims: dict[str, Source | None] = {}
        for source, commit in zip(usable, answers, strict=True):
            if commit is not None:
                claims.setdefault(commit, source)
        if not claims:
            reasons = "; ".join(f"{s.name}: {s.failure or f'does not have {ref}'}" for s in self.sources)
            raise PullError(f"ref {ref} was not found on any source ({reasons})")
        return list(claims.items())

    async def _verify_candidate(
        self, checksum: str, claimer: Source | None, ref: str | None, head: tuple[str, Commit] | None
    ) -> VerifiedCommit:
        """Fetch (or read) a commit with its signatures and verify it, trying each source in turn."""
        local = await asyncio.to_thread(self._read_local, checksum)
        providers: list[Source | None] = [None] if local is not None else []
        providers += sorted((s for s in self.sources if s.usable), key=lambda s: s is not claimer)
        problems: list[str] = []
        for provider in providers:
            where = provider.name if provider is not None else "this repository"
            try:
                if provider is None:
                    assert local is not None
                    data, meta = local
                else:
                    fetched = local[0] if local is not None else await provider.get_small(_commit(checksum))
                    if fetched is None:
                        problems.append(f"{where}: does not have it")
                        continue
                    data = fetched
                    meta = await provider.get_small(ObjectName(checksum, ObjectType.COMMIT_META))
                return await asyncio.to_thread(
                    verify_commit,
                    checksum,
                    data,
                    meta,
                    self.options.trust,
                    ref=ref,
                    collection_id=self.repo.collection_id,
                    head=head,
                )
            except SourceFailure as e:
                problems.append(f"{where}: {e.reason}")
            except CorruptObject as e:
                if provider is not None:
                    provider.abandon(f"served a corrupt commit: {e}", bad_data=True)
                problems.append(f"{where}: {e}")
            except CommitRejected as e:
                if e.intrinsic:
                    raise
                problems.append(f"{where}: {e}")
        raise CommitRejected("; ".join(problems) or "no source has it", intrinsic=False)

    def _read_local(self, checksum: str) -> tuple[bytes, bytes | None] | None:
        if not self.repo.has_object(checksum, ObjectType.COMMIT):
            return None
        return self.repo.read_metadata_bytes(checksum, ObjectType.COMMIT), self._local_commitmeta(checksum)

    # -- the transaction -------------------------------------------------------------------

    async def _transaction(self, chosen: VerifiedCommit, ref: str | None) -> None:
        """Store the commit and its closure under the shared lock and a lease, then move the ref."""
        self.checksum, self.ref = chosen.checksum, ref
        lock = self.repo.lock(exclusive=False)
        # flock may wait for a prune to finish: not on the event loop.
        await asyncio.to_thread(lock.__enter__)
        error: str | None = None
        try:
            await self.recorder.start(chosen.checksum, ref, ", ".join(s.name for s in self.sources))
            renewer = asyncio.create_task(self._renew_lease())
            try:
                await asyncio.to_thread(self._store_commit, chosen)
                await self._fetch_closure(chosen.commit)
                # Before the ref moves: peers reading our info then see where the bytes came from.
                await self.recorder.split(*self._split())
                await asyncio.to_thread(self._finish, chosen, ref)
            except BaseException as e:
                error = str(e) or type(e).__name__
                raise
            finally:
                renewer.cancel()
                used = ", ".join(name for name, s in self.stats.items() if s.objects)
                progress = (self.objects_done, self.objects_total, self.bytes_done)
                await self.recorder.finish(used, error, progress, self._split())
        finally:
            lock.__exit__(None, None, None)

    def _split(self) -> tuple[int, int]:
        """Bytes stored so far from the origin (any source not a peer) and from LAN peers."""
        peers = {s.name for s in self.sources if s.kind == "peer"}
        from_peers = sum(s.bytes for name, s in self.stats.items() if name in peers)
        return self.bytes_done - from_peers, from_peers

    async def _renew_lease(self) -> None:
        interval = self.recorder.lease_ttl.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            await self.recorder.renew()

    def _store_commit(self, chosen: VerifiedCommit) -> None:
        repo, checksum = self.repo, chosen.checksum
        if not repo.has_object(checksum, ObjectType.COMMIT):
            # The marker comes first: a crash right after the commit object appears must not
            # leave a commit that looks complete.
            self._mark_partial(checksum)
            repo.write_metadata(ObjectType.COMMIT, chosen.data, checksum)
        elif repo.is_partial(checksum):
            self.partial_marked = True
        if chosen.commitmeta is not None and chosen.commitmeta != self._local_commitmeta(checksum):
            repo.write_commitmeta_bytes(checksum, chosen.commitmeta)

    def _local_commitmeta(self, checksum: str) -> bytes | None:
        try:
            return self.repo.read_metadata_bytes(checksum, ObjectType.COMMIT_META)
        except MissingObject:
            return None

    def _mark_partial(self, checksum: str) -> None:
        if not self.partial_marked:
            self.repo.mark_partial(checksum)
            self.partial_marked = True

    def _finish(self, chosen: VerifiedCommit, ref: str | None) -> None:
        repo = self.repo
        # Objects become durable before the commit stops being partial and before a ref moves.
        repo.sync()
        repo.clear_partial(chosen.checksum)
        if ref is None:
            return
        # Another pull may have moved the ref while we worked: never backwards, even then.
        head = repo.read_ref(ref)
        if head is not None and head != chosen.checksum and repo.has_object(head, ObjectType.COMMIT):
            check_not_older(chosen.checksum, chosen.commit, ref, head, repo.load_commit(head))
        repo.write_ref(ref, chosen.checksum)

    # -- the closure -----------------------------------------------------------------------

    async def _fetch_closure(self, commit: Commit) -> None:
        """Walk the tree level by level, fetching missing metadata, then every missing file."""
        received = await self._fetch_trees(commit)
        trees, metas = [commit.root_tree], [commit.root_meta]
        seen_trees: set[str] = set()
        seen_metas: set[str] = set()
        files: dict[str, None] = {}  # ordered set: fetch in walk order
        while trees or metas:
            seen_trees.update(trees)
            seen_metas.update(metas)
            level = [ObjectName(t, ObjectType.DIR_TREE) for t in trees]
            level += [ObjectName(m, ObjectType.DIR_META) for m in metas]
            # What the trees response stored is present: only the rest is looked for on disk.
            unknown = [n for n in level if n not in received.stored]
            await self._fetch(await asyncio.to_thread(self._missing, unknown) if unknown else [])
            unread = [t for t in trees if t not in received.listings]
            read = await asyncio.to_thread(self._list_trees, unread) if unread else []
            listed = [*(received.listings[t] for t in trees if t in received.listings), *read]
            trees, metas = [], []
            for tree_files, dirs in listed:
                trees += [t for t, _ in dirs if t not in seen_trees]
                metas += [m for _, m in dirs if m not in seen_metas]
                files.update(dict.fromkeys(tree_files))
            trees, metas = list(dict.fromkeys(trees)), list(dict.fromkeys(metas))
        wanted = [ObjectName(f, ObjectType.FILE) for f in files]
        missing = await asyncio.to_thread(self._missing, wanted)
        self.phase = "content"
        self.objects_total = self.objects_done + len(missing)
        await self._fetch(missing)

    async def _fetch_trees(self, commit: Commit) -> ReceivedTrees:
        """The tree's directory metadata in one round trip from a peer holding the whole commit,
        leaving out what the ref's current commit shares with it; the levels walk that follows
        then finds it here and fetches only what the peer left out (a round trip per level)."""
        if await asyncio.to_thread(self.repo.has_object, commit.root_tree, ObjectType.DIR_TREE):
            return ReceivedTrees()  # a resumed pull, or a tree shared with a commit held here: walk it
        peer = next(
            (
                s
                for s in self.sources
                if isinstance(s, PeerSource)
                and s.usable
                and s not in self.backing_off
                and s.holds_complete(self.checksum)
                and wire.TREES_FEATURE in s.features
            ),
            None,
        )
        if peer is None:
            return ReceivedTrees()
        if not self.partial_marked:
            await asyncio.to_thread(self._mark_partial, self.checksum)
        base = await asyncio.to_thread(self._complete_head)
        self.pipeline.start()  # the workers fork while the peer reads the first dirtrees
        return await peer.fetch_trees(self.checksum, commit.root_tree, commit.root_meta, base, self._sink)

    def _complete_head(self) -> str | None:
        """The commit the ref being moved points at, if held complete here (a trees base)."""
        head = self.repo.read_ref(self.ref) if self.ref is not None else None
        if head is None or head == self.checksum or self.repo.is_partial(head):
            return None
        return head if self.repo.has_object(head, ObjectType.COMMIT) else None

    def _missing(self, names: Sequence[ObjectName]) -> list[ObjectName]:
        return [names[i] for i in self.repo.absent([(n.checksum, n.kind) for n in names])]

    def _list_trees(self, trees: Sequence[str]) -> list[DirTreeListing]:
        listed: list[DirTreeListing] = []
        for checksum in trees:
            # Present objects were verified when they were stored.
            tree = self.repo.load_dirtree(checksum, verify=False)
            listed.append(([c for _, c in tree.files], [(t, m) for _, t, m in tree.dirs]))
        return listed

    async def _fetch(self, names: Sequence[ObjectName]) -> None:
        """Store every object in ``names``, each from the first source that serves it correctly."""
        if not names:
            return
        if not self.partial_marked:
            # Objects missing under a commit that looked complete: it is not, until we are done.
            await asyncio.to_thread(self._mark_partial, self.checksum)
        pending = list(names)
        reasons: dict[ObjectName, list[str]] = {}
        fleet = self._fleet()
        if fleet is not None:
            unavailable = await fleet.fetch(pending)
            pending = [n for n in pending if n in unavailable]
            for name, why in unavailable.items():
                reasons[name] = list(why)
        elif len(pending) >= SPREAD_MIN_OBJECTS:
            pending = await self._spread(pending)
        for source in self.sources:
            if not pending:
                break
            if not source.usable:
                for name in pending:
                    reasons.setdefault(name, []).append(f"{source.name}: not used ({source.failure})")
                continue
            missing = await source.fetch(pending, self._sink, self.options.parallel)
            for name, reason in missing.items():
                reasons.setdefault(name, []).append(f"{source.name}: {reason}")
            pending = [n for n in pending if n in missing]
        if pending:
            first = pending[0]
            more = f" ({len(pending) - 1} more objects missing too)" if len(pending) > 1 else ""
            raise PullError(f"no source could provide {first}: " + "; ".join(reasons[first]) + more)

    def _fleet(self) -> Fleet | None:
        """The split with LAN machines pulling this commit too, decided at the first fetch: only
        with an origin, peers to share with, and none of them holding the whole commit already
        (then they serve it, as without a fleet)."""
        if not self.fleet_checked:
            self.fleet_checked = True
            options = self.options.fleet
            peers = [s for s in self.sources if s.kind == "peer" and s.usable and s not in self.backing_off]
            if options is not None and not any(s.holds_complete(self.checksum) for s in peers):
                usable = [s for s in self.sources if s not in self.backing_off]
                parallel = self.options.parallel
                self.fleet = Fleet.of(options.node_id, self.checksum, self.ref, usable, self._sink, parallel)
        return self.fleet

    async def _spread(self, names: list[ObjectName]) -> list[ObjectName]:
        """Fetch ``names`` from every peer holding the whole commit at once; returns what none served.

        Each peer gets ``parallel`` workers taking batches from one queue, so a fast peer serves
        more; a peer that fails stops taking batches and what it did not serve goes back to the
        normal fallback.
        """
        holders = [
            s
            for s in self.sources
            if s.usable and s.kind == "peer" and s not in self.backing_off and s.holds_complete(self.checksum)
        ]
        if len(holders) < 2:
            return names
        parallel = self.options.parallel
        # About four batches per worker: few requests, yet a faster peer can take more of them.
        per_worker = -(-len(names) // (len(holders) * parallel * 4))
        size = min(max(_SPREAD_MIN_BATCH, per_worker), MAX_BATCH_OBJECTS)
        batches = iter([names[i : i + size] for i in range(0, len(names), size)])
        # Interleaved, so that the first batches go to every peer, not all to the first one.
        workers = iter([source for _ in range(parallel) for source in holders])
        left: list[ObjectName] = []

        async def serve() -> None:
            source = next(workers)
            for batch in batches:
                missing = await source.fetch(batch, self._sink, 1)
                left.extend(n for n in batch if n in missing)
                if not source.usable:
                    return

        await run_workers(len(holders) * parallel, serve)
        for batch in batches:  # batches nobody took: every holder failed
            left.extend(batch)
        return left

    async def _sink(
        self, source: Source, items: Sequence[tuple[ObjectName, bytes | BinaryIO]]
    ) -> tuple[int, CorruptObject | None]:
        """Verify and store ``items`` from ``source`` in order: how many were stored, and why the
        next one was refused (None when all were stored)."""
        # One hop for the whole group (to a worker process, or a thread for small groups): a hop
        # per object cost more in hand-offs and GIL contention than small objects take to store.
        sizes, error = await self.pipeline.store(items)
        stats = self.stats.setdefault(source.name, SourceStats())
        for size in sizes:
            stats.objects += 1
            stats.bytes += size
            self.objects_done += 1
            self.bytes_done += size
            if self.progress is not None:
                done, total = self.objects_done, self.objects_total
                self.progress(ProgressUpdate(self.phase, done, total, self.bytes_done, source.name))
        await self.recorder.progress(self.objects_done, self.objects_total, self.bytes_done)
        if isinstance(error, LocalWriteError):
            raise error
        return len(sizes), error


def _commit(checksum: str) -> ObjectName:
    return ObjectName(checksum, ObjectType.COMMIT)
