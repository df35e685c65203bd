"""Follow refs through their checkpoint chains, so this node ends up holding every checkpoint.

Following a ref means: pull its newest head (full closure) from every source the plan names, then
walk its history back through parent links.  Ancestors missing here are fetched as commit objects
only (``.commitpartial``, with their signatures, verified), enough for any peer to compute an
update path; checkpoints among them are pulled in full, since a machine must deploy them.  A
checkpoint target (``eos.checkpoint-target`` / ``ostree.endoflife-rebase``) and the way back of a
new ref (``lanshare.checkpoint-source``) name more refs to follow, each once.

Errors never stop the other refs: each is reported in :class:`FollowReport` and the next round
tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import aiohttp
from sqlalchemy import Engine

from lanshare.errors import CorruptObject, Error, MissingObject
from lanshare.ostree.commit_tree import CHECKPOINT_SOURCE_KEY
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo, validate_ref
from lanshare.pull import PlanEntry, PullOptions, pull
from lanshare.pull.errors import CommitRejected, SourceFailure
from lanshare.pull.sources import Source, expand_plan, open_sources
from lanshare.pull.verify import VerifiedCommit, verify_commit
from lanshare.update_path import CommitInfo
from lanshare.wire import ObjectName

log = logging.getLogger(__name__)

# Guards the walk against an absurdly long or looping history.
MAX_HISTORY = 100_000


@dataclass
class FollowReport:
    """What one round of following did."""

    heads: dict[str, str] = field(default_factory=dict)  # ref -> its head after the round
    pulled: list[str] = field(default_factory=list)  # commits whose closure was fetched
    commit_only: list[str] = field(default_factory=list)  # ancestors fetched as commit objects
    errors: list[str] = field(default_factory=list)
    refs_by_commit: dict[str, str] = field(default_factory=dict)  # for the index: commit -> its ref

    @property
    def changed(self) -> bool:
        """Whether anything new entered the repository."""
        return bool(self.pulled or self.commit_only)


class Follower:
    """Follows refs for one repository; ``plan`` is called for the sources of each pull."""

    def __init__(
        self,
        repo: Repo,
        plan: Callable[[], Sequence[PlanEntry]],
        options: PullOptions,
        index: Engine | None = None,
    ) -> None:
        self.repo = repo
        self.plan = plan
        self.options = options
        self.index = index

    async def follow(self, refs: Sequence[str]) -> FollowReport:
        """Follow ``refs`` and every ref their chains lead to."""
        report = FollowReport()
        queue = list(dict.fromkeys(refs))
        done: set[str] = set()
        while queue:
            ref = queue.pop(0)
            if ref in done:
                continue
            done.add(ref)
            try:
                queue += await self._follow_ref(ref, report)
            except (Error, aiohttp.ClientError, OSError) as e:
                report.errors.append(f"{ref}: {e}")
        return report

    async def _follow_ref(self, ref: str, report: FollowReport) -> list[str]:
        """Pull the head of ``ref``, then walk its history; returns the refs it leads to."""
        plan = list(self.plan())
        result = await pull(self.repo, ref, plan, options=self.options, index=self.index)
        report.heads[ref] = result.commit
        report.refs_by_commit[result.commit] = ref
        if not result.up_to_date:
            report.pulled.append(result.commit)
            log.info("%s: pulled %s (%d objects)", ref, result.commit, result.objects_fetched)
        leads: list[str] = []
        async with _LazySources(self.repo, plan, self.options) as sources:
            checksum: str | None = result.commit
            seen: set[str] = set()
            while checksum is not None and checksum not in seen and len(seen) < MAX_HISTORY:
                seen.add(checksum)
                info = await self._commit_info(checksum, sources, report)
                if info is None:
                    break  # no source holds older history: the reachable chain ends here
                report.refs_by_commit.setdefault(checksum, ref)
                if info.is_checkpoint and not await asyncio.to_thread(self._complete, checksum):
                    await self._pull_checkpoint(ref, checksum, plan, report)
                if info.target is not None:
                    leads.append(info.target)
                if (way_back := await asyncio.to_thread(self._checkpoint_source, checksum)) is not None:
                    leads.append(way_back)
                checksum = info.parent
        return leads

    async def _pull_checkpoint(
        self, ref: str, checksum: str, plan: Sequence[PlanEntry], report: FollowReport
    ) -> None:
        try:
            await pull(self.repo, checksum, plan, options=self.options, index=self.index)
        except (Error, aiohttp.ClientError, OSError) as e:
            # The rest of the chain is still worth walking; the next round tries this one again.
            report.errors.append(f"{ref}: checkpoint {checksum}: {e}")
            return
        report.pulled.append(checksum)
        log.info("%s: pulled checkpoint %s", ref, checksum)

    def _complete(self, checksum: str) -> bool:
        return self.repo.has_object(checksum, ObjectType.COMMIT) and not self.repo.is_partial(checksum)

    def _checkpoint_source(self, checksum: str) -> str | None:
        value = self.repo.load_commit(checksum, verify=False).meta_value(CHECKPOINT_SOURCE_KEY)
        if not isinstance(value, str):
            return None
        ref = value.partition("@")[0]
        try:
            return validate_ref(ref)
        except Error:
            log.warning("commit %s: ignoring malformed %s %r", checksum, CHECKPOINT_SOURCE_KEY, value)
            return None

    async def _commit_info(
        self, checksum: str, sources: _LazySources, report: FollowReport
    ) -> CommitInfo | None:
        """The commit as held here, else fetched (commit object only) from the first source with it."""
        local = await asyncio.to_thread(self._local_info, checksum)
        if local is not None:
            return local
        verified = await sources.fetch_commit(checksum, self.repo.collection_id)
        if verified is None:
            return None
        await asyncio.to_thread(self._store_commit_only, verified)
        report.commit_only.append(checksum)
        return CommitInfo.from_commit(checksum, verified.commit, complete=False)

    def _local_info(self, checksum: str) -> CommitInfo | None:
        try:
            commit = self.repo.load_commit(checksum, verify=False)
        except (MissingObject, CorruptObject):
            return None
        return CommitInfo.from_commit(checksum, commit, complete=not self.repo.is_partial(checksum))

    def _store_commit_only(self, verified: VerifiedCommit) -> None:
        repo = self.repo
        # The shared lock keeps a prune (exclusive) from sweeping between marker and object.
        with repo.lock(exclusive=False):
            if repo.has_object(verified.checksum, ObjectType.COMMIT):
                return
            # The marker first: a crash must never leave a commit object that looks complete.
            repo.mark_partial(verified.checksum)
            repo.write_metadata(ObjectType.COMMIT, verified.data, verified.checksum)
            if verified.commitmeta is not None:
                repo.write_commitmeta_bytes(verified.checksum, verified.commitmeta)


class _LazySources:
    """The plan's sources, contacted only once an ancestor is missing here."""

    def __init__(self, repo: Repo, plan: Sequence[PlanEntry], options: PullOptions) -> None:
        self.repo = repo
        self.plan = plan
        self.options = options
        self._stack = AsyncExitStack()
        self._sources: list[Source] | None = None

    async def __aenter__(self) -> _LazySources:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _open(self) -> list[Source]:
        if self._sources is None:
            timeouts = self.options.timeouts
            session = await self._stack.enter_async_context(
                aiohttp.ClientSession(timeout=timeouts.client_timeout())
            )
            specs = expand_plan(self.plan)
            self._sources = await open_sources(session, specs, timeouts, self.repo.tmp_dir)
        return self._sources

    async def fetch_commit(self, checksum: str, collection_id: str | None) -> VerifiedCommit | None:
        """The commit and its signatures, verified, from the first source that has them; or None."""
        for source in await self._open():
            if not source.usable:
                continue
            try:
                data = await source.get_small(ObjectName(checksum, ObjectType.COMMIT))
                if data is None:
                    continue
                meta = await source.get_small(ObjectName(checksum, ObjectType.COMMIT_META))
                return await asyncio.to_thread(
                    verify_commit,
                    checksum,
                    data,
                    meta,
                    self.options.trust,
                    ref=None,
                    collection_id=collection_id,
                    head=None,
                )
            except SourceFailure:
                continue  # get_small abandoned the source already
            except CorruptObject as e:
                source.abandon(f"served a corrupt commit: {e}", bad_data=True)
            except CommitRejected as e:
                log.warning("%s: history commit %s rejected: %s", source.name, checksum, e)
        return None
