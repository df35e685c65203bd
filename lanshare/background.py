"""The daemon's background work: poll the origin, converge with LAN peers, apply retention.

Both loops end in the same *round*: follow the followed refs through their checkpoint chains
(:mod:`lanshare.follow`) from the sources ``[pull] order`` names — LAN peers (static and from the
peer table) and the origin — then record what arrived in the index, refresh the summary and
prune.  One round runs at a time (an :class:`asyncio.Lock`); an error is logged and the next
round tries again, the daemon never stops for it.

- **Origin poll** (only with ``[origin] url``): a round at start — on a LAN, after discovery had
  :data:`SETTLE` seconds (plus jitter) to find the peers to split the download with — then every
  ``poll_interval`` ± 10 % (jitter, so a fleet switched on together does not hit the origin together).
- **LAN convergence**: every :data:`LAN_INTERVAL` seconds, look at what each peer holds (the peer
  table, a local read; static peers missing from it are asked at most every
  :data:`STATIC_PROBE_INTERVAL` seconds); when one
  holds a head or checkpoint of a followed ref that is missing here, run a round.  A set of
  missing commits that a round could not fetch is not retried until it changes or
  :data:`RETRY_AFTER` passes, so a peer offering something unacceptable cannot keep us busy.

A *followed ref* is one of ``[origin] refs``, or, when that is empty (an offline machine), a ref
this repository already holds.  Refs reached through checkpoint targets are followed too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from lanshare.config import Config
from lanshare.discovery.peers import TablePeers, peer_url
from lanshare.errors import Error
from lanshare.follow import Follower, FollowReport
from lanshare.index import sync
from lanshare.index.db import writer
from lanshare.index.models import Peer, utcnow
from lanshare.ostree.objects import ObjectType, is_checksum
from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import PRIVATE_REF_PREFIX, refresh_summary
from lanshare.plan import plan_from_config
from lanshare.prune import prune
from lanshare.pull import PlanEntry, SourceSpec, StaticPeers, Timeouts
from lanshare.pull.configured import pull_options
from lanshare.pull.errors import SourceFailure
from lanshare.pull.sources import probe_info
from lanshare.retention import PinRule, RetentionPolicy
from lanshare.server.limits import PeerStats

log = logging.getLogger(__name__)

# Seconds between looks at what the peers hold, between HTTP probes of static peers the table
# lacks, and before a set of commits that could not be fetched is tried again.
LAN_INTERVAL = 2.0
STATIC_PROBE_INTERVAL = 10.0
FLUSH_INTERVAL = 10.0
RETRY_AFTER = 600.0
JITTER = 0.10
# The first origin round waits this long for discovery to find the LAN's machines, plus up to
# START_JITTER (lanshare.pull.fleet splits a commit between the machines pulling it at once).
SETTLE = 3.0
START_JITTER = 1.0
_PROBE_TIMEOUTS = Timeouts(connect=3.0, read=5.0, low_speed_time=5.0)


def jittered(seconds: float) -> float:
    """``seconds`` ± 10 %."""
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True)
class PeerView:
    """What a peer holds, as far as convergence cares."""

    url: str
    refs: dict[str, str]
    newest_checkpoint: str | None


@dataclass
class FleetPeers:
    """The LAN sources of a pull: peers from the index's peer table, then the static ones.

    The table (filled by discovery and health checks) is read by :meth:`refresh`, off the event
    loop; ``peer_specs`` only returns the snapshot.  URLs that turned out to be this node are left out.
    """

    static_urls: tuple[str, ...]
    own_node_id: str
    rows: list[Peer] = field(default_factory=list)
    own_urls: set[str] = field(default_factory=set)

    def refresh(self, engine: Engine) -> None:
        """Read the peer table (blocking)."""
        try:
            with Session(engine, expire_on_commit=False) as session:
                rows = list(session.scalars(select(Peer).order_by(Peer.last_seen.desc())))
        except SQLAlchemyError as e:
            log.warning("cannot read the peer table: %s", e)
            return
        self.rows = [r for r in rows if r.node_id != self.own_node_id and r.addresses and r.port]

    def table_urls(self) -> list[str]:
        """The base URL of each peer in the table."""
        return [peer_url(r.addresses[0], r.port) for r in self.rows]

    def peer_specs(self) -> Sequence[SourceSpec]:
        """Table peers (as the peer table ranks them, down ones left out), then static URLs, not us."""
        now = utcnow()
        usable = [
            r for r in self.rows if r.healthy or (r.backoff_until is not None and r.backoff_until <= now)
        ]
        rows = sorted(usable, key=lambda r: (not r.healthy, -(r.last_rate or 0.0), -r.last_seen.timestamp()))
        urls = [peer_url(r.addresses[0], r.port) for r in rows] + list(self.static_urls)
        return [SourceSpec(u, "peer") for u in dict.fromkeys(urls) if u not in self.own_urls]


def retention_policy(config: Config, engine: Engine, now: float) -> RetentionPolicy:
    """The retention policy: config, plus pins, leases and last use recorded in the index."""
    retention = config.retention
    pins = [PinRule(p.ref, p.commit, p.reason) for p in config.pins] + sync.pin_rules(engine)
    return RetentionPolicy(
        keep_latest=retention.keep_latest,
        keep_younger_than=int(retention.keep_younger_than.total_seconds()),
        max_size=retention.max_size,
        followed_refs=list(config.origin.refs) or None,
        pins=pins,
        leases=sync.active_leases(engine),
        last_used=sync.last_used(engine),
        now=now,
    )


class Background:
    """The origin poll and LAN convergence loops of one daemon; an async context manager."""

    def __init__(
        self,
        config: Config,
        repo: Repo,
        index: Engine,
        node_id: str,
        served: Callable[[], Mapping[str, PeerStats]] | None = None,
    ) -> None:
        self.config = config
        # The LAN listener's bytes served per client address since start, added to the peers'
        # bytes_out in the index every FLUSH_INTERVAL; ``flushed`` is how much of it is there.
        self.served = served
        self.flushed: dict[str, int] = {}
        self._flushed_at = time.monotonic()
        self.repo = repo
        self.index = index
        self.node_id = node_id
        self.lock = asyncio.Lock()
        self.fleet = FleetPeers(config.sharing.peers, node_id)
        # Also the options of the pulls ``lanshare pull`` hands to this daemon (lanshare.control).
        self.options = pull_options(config, node_id)
        self.follower = Follower(repo, self.plan, self.options, index)
        self.rounds = 0  # completed rounds, for tests and the status page
        # Refs the followed ones led to through checkpoint targets (os/stable → os/stable-v2):
        # a peer's newer commit on one of them is worth fetching too.
        self.chain_refs: set[str] = set()
        self.last_report: FollowReport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: tuple[frozenset[str], float] | None = None
        self._probed_at = -STATIC_PROBE_INTERVAL
        self._told_no_refs = False

    def plan(self) -> list[PlanEntry]:
        """``[pull] order`` over the fleet's peers and the origin."""
        plan = [self.fleet if isinstance(e, StaticPeers) else e for e in plan_from_config(self.config)]
        for entry in plan:
            if isinstance(entry, TablePeers):
                entry.wait_for_discovery = False  # the first round already waited SETTLE seconds
        return plan

    async def __aenter__(self) -> Background:
        if self.config.origin.url is not None:
            self._tasks.append(asyncio.create_task(self._origin_loop(), name="origin poll"))
        self._tasks.append(asyncio.create_task(self._lan_loop(), name="LAN convergence"))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        # A pull cut short leaves only verified objects; its transfer row says "failed".
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush_served()

    # -- rounds ----------------------------------------------------------------------------

    def followed_refs(self) -> list[str]:
        """``[origin] refs``, or the refs held here (blocking: lists the refs)."""
        if self.config.origin.refs:
            return list(self.config.origin.refs)
        return sorted(r for r in self.repo.list_refs() if not r.startswith(PRIVATE_REF_PREFIX))

    async def round(self, why: str) -> FollowReport | None:
        """Follow every followed ref once, then record, refresh the summary and prune."""
        async with self.lock:
            refs = await asyncio.to_thread(self.followed_refs)
            if not refs:
                if self.config.origin.url is not None and not self._told_no_refs:
                    self._told_no_refs = True
                    log.warning("[origin] url is set but there is nothing to follow: set [origin] refs")
                return None
            await asyncio.to_thread(self.fleet.refresh, self.index)
            log.debug("%s: following %s", why, ", ".join(refs))
            report = await self.follower.follow(refs)
            self.chain_refs.update(report.heads)
            for error in report.errors:
                log.warning("%s: %s", why, error)
            if report.changed:
                await asyncio.to_thread(self._after_pull, report)
                log.info(
                    "%s: %d commits pulled, %d history commits fetched",
                    why,
                    len(report.pulled),
                    len(report.commit_only),
                )
            self.rounds += 1
            self.last_report = report
            return report

    def _after_pull(self, report: FollowReport) -> None:
        """Index, summary and retention after commits arrived (blocking)."""
        try:
            by_ref: dict[str, list[str]] = {}
            for commit in [*report.pulled, *report.commit_only]:
                by_ref.setdefault(report.refs_by_commit.get(commit, ""), []).append(commit)
            for ref, commits in by_ref.items():
                sync.record_commits(self.index, self.repo, commits, ref or None)
        except SQLAlchemyError as e:
            log.warning("cannot record the pulled commits in the index: %s", e)
        try:
            refresh_summary(self.repo, regenerate=self.config.repo.regenerate_summary)
        except Error as e:
            log.error("cannot regenerate the summary: %s", e)
        try:
            pruned = prune(self.repo, retention_policy(self.config, self.index, time.time()))
            if pruned.objects_freed or pruned.made_partial:
                sync.reindex(self.index, self.repo)
                log.info("retention: freed %d objects", pruned.objects_freed)
        except (Error, OSError, SQLAlchemyError) as e:
            log.error("retention after the pull failed: %s", e)

    # -- the loops -------------------------------------------------------------------------

    def first_round_delay(self) -> float:
        """Seconds before the first origin round: none for a machine that has no LAN to share with;
        else discovery gets :data:`SETTLE` seconds to find the peers switched on with this one (to
        split the download with them), plus up to :data:`START_JITTER` so they do not all start at once."""
        sharing = self.config.sharing
        if not self.config.pull.coordinate or not (sharing.discovery or sharing.peers):
            return 0.0
        return SETTLE + random.uniform(0, START_JITTER)

    async def _origin_loop(self) -> None:
        interval = self.config.origin.poll_interval.total_seconds()
        await asyncio.sleep(self.first_round_delay())
        while True:
            await self._guarded(self.round("origin poll"))
            await asyncio.sleep(jittered(interval))

    async def _lan_loop(self) -> None:
        while True:
            await asyncio.sleep(jittered(LAN_INTERVAL))
            await self._guarded(self.converge())
            if time.monotonic() - self._flushed_at >= FLUSH_INTERVAL:
                await self._guarded(self.flush_served())

    async def flush_served(self) -> None:
        """Add what the LAN listener served each peer since the last flush to its ``bytes_out``."""
        self._flushed_at = time.monotonic()
        if self.served is None:
            return
        sent = {ip: s.bytes_out for ip, s in self.served().items()}
        delta = {ip: n - self.flushed.get(ip, 0) for ip, n in sent.items() if n > self.flushed.get(ip, 0)}
        if not delta:
            return
        try:
            claimed = await asyncio.to_thread(_add_bytes_out, self.index, delta)
        except SQLAlchemyError as e:
            log.warning("cannot record the bytes served to peers: %s", str(e).splitlines()[0])
            return
        # A new dict, not an update: the status page reads it from its own thread.
        self.flushed = {**self.flushed, **{ip: sent[ip] for ip in claimed}}

    async def _guarded(self, work: Awaitable[object]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            # Whatever went wrong, the daemon keeps serving and the next round tries again.
            log.exception("background round failed")

    async def converge(self) -> FollowReport | None:
        """Run a round if a peer holds a followed head or a checkpoint that is missing here."""
        await asyncio.to_thread(self.fleet.refresh, self.index)
        views = await self._peer_views()
        if not views:
            return None
        refs = sorted({*await asyncio.to_thread(self.followed_refs), *self.chain_refs})
        missing = await asyncio.to_thread(self._missing, views, refs)
        if not missing:
            return None
        if self._failed is not None:
            tried, when = self._failed
            if tried == missing and time.monotonic() - when < RETRY_AFTER:
                return None
        log.info("peers hold %d commits of followed refs missing here: fetching", len(missing))
        report = await self.round("LAN convergence")
        still = await asyncio.to_thread(self._missing, views, refs)
        self._failed = (still, time.monotonic()) if still else None
        return report

    def _missing(self, views: Sequence[PeerView], refs: Sequence[str]) -> frozenset[str]:
        """Heads of followed refs, and newest checkpoints, that peers hold and we lack (blocking)."""
        missing: set[str] = set()
        for view in views:
            for ref in refs:
                head = view.refs.get(ref)
                # An older head we never held is possible too; the pull keeps refs from going back.
                if head is not None and not self.repo.has_object(head, ObjectType.COMMIT):
                    missing.add(head)
            checkpoint = view.newest_checkpoint
            if checkpoint is not None and (
                not self.repo.has_object(checkpoint, ObjectType.COMMIT) or self.repo.is_partial(checkpoint)
            ):
                missing.add(checkpoint)
        return frozenset(missing)

    async def _peer_views(self) -> list[PeerView]:
        """What each peer holds: from the peer table, and by asking static peers it lacks."""
        views = [
            PeerView(peer_url(r.addresses[0], r.port), dict(r.holdings or {}), r.newest_checkpoint)
            for r in self.fleet.rows
            if r.healthy
        ]
        known = {_host_port(v.url) for v in views}
        to_probe = [u for u in self.fleet.static_urls if _host_port(u) not in known]
        now = time.monotonic()
        if to_probe and now - self._probed_at >= STATIC_PROBE_INTERVAL:
            self._probed_at = now
            async with aiohttp.ClientSession(timeout=_PROBE_TIMEOUTS.client_timeout()) as session:
                probed = await asyncio.gather(*(self._probe(session, u) for u in to_probe))
            views += [v for v in probed if v is not None]
        return views

    async def _probe(self, session: aiohttp.ClientSession, url: str) -> PeerView | None:
        try:
            info = await probe_info(session, url, _PROBE_TIMEOUTS)
        except SourceFailure as e:
            log.debug("static peer %s: %s", url, e.reason)
            return None
        if info.get("node_id") == self.node_id:
            self.fleet.own_urls.add(url)  # the shared static list names this node too
            return None
        raw_refs = info.get("refs")
        refs = {
            r: c
            for r, c in (raw_refs.items() if isinstance(raw_refs, dict) else [])
            if isinstance(r, str) and isinstance(c, str) and is_checksum(c)
        }
        newest = info.get("newest_checkpoint")
        return PeerView(url, refs, newest if isinstance(newest, str) and is_checksum(newest) else None)


def _add_bytes_out(engine: Engine, delta: Mapping[str, int]) -> set[str]:
    """Add ``delta`` (bytes per client address) to the peers at those addresses; the addresses
    that matched a peer (the others stay unflushed: a peer may enter the table later)."""
    claimed: set[str] = set()
    with Session(writer(engine)) as session, session.begin():
        for peer in session.scalars(select(Peer)):
            mine = [ip for ip in peer.addresses if ip in delta and ip not in claimed]
            if mine:
                peer.bytes_out = (peer.bytes_out or 0) + sum(delta[ip] for ip in mine)
                claimed.update(mine)
    return claimed


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "", parts.port or 80)
