"""One download per LAN: machines pulling the same commit split its missing objects between them.

No coordinator.  Each pull announces the commit it is fetching (``fetching`` in the daemon's
``/lanshare/v1/info``, which also changes the TXT digest).  While a pull fetches a set of objects
(one tree level, then the files) it looks at the peers it opened: the *members* are this node and
every peer announcing the same commit.  Each missing object belongs to one member, by rendezvous
hashing of (node id, object checksum) — every member computes the same split from the same
membership, and a member leaving moves only its own objects, spread over the others.  This node
fetches its share from the origin and asks each other member, in a loop, for that member's share
as it arrives (a peer serves any verified object it holds, also of a commit still being pulled).
Every object still goes through the pull's sink: it is verified as any other.

A member is dropped from the split, its objects going to the others (this node fetching its new
share from the origin), when it serves nothing of its share for :data:`STALL_AFTER` seconds (a
liar claiming to fetch, a dead or wedged machine), when it fails (bad data, transport errors: the
source is abandoned as in any pull) or stops answering its info document.  A peer that holds the
whole commit takes everything over: nobody needs the origin any more.  Views of the membership may
differ for a moment (a peer seen a second later): that costs at most a few objects fetched twice,
or a member waited for until it is dropped — a bounded delay, never a stuck pull.

Before the first objects go to the origin, every member is asked once for everything missing here
(a machine that starts late gets what the others already have), waiting at most :data:`SWEEP_WAIT`.
Peers that answer but do not pull the commit yet, and are likely to (fresh machines, or holding
its ref), would own some objects too: those are fetched last, not before :data:`DEFER_GRACE`
seconds into the pull, so that a machine switched on a moment later still finds them to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from lanshare.config import Config
from lanshare.errors import CorruptObject
from lanshare.pull.http import Timeouts
from lanshare.pull.sources import PeerSource, Sink, Source
from lanshare.wire import MAX_BATCH_OBJECTS, ObjectName

log = logging.getLogger(__name__)

# The daemon's node id file in the state directory (lanshare.daemon.NODE_ID_FILE).
NODE_ID_FILE = "node-id"

# A member that serves nothing of its share for this long is dropped from the split: long enough
# for a few large objects over a shared slow uplink, short enough to bound a liar's cost.
STALL_AFTER = 8.0
# How often a member is asked for its share while it serves nothing new (backing off to the max).
POLL_FIRST, POLL_MAX = 0.1, 0.5
# How often the members' info documents are read again (who fetches, who holds the commit now).
INFO_EVERY = 0.5
# The longest the origin waits for the first look at what the members already hold.
SWEEP_WAIT = 2.0
# Peers likely to pull the same commit (fresh ones, or holding its ref) get this long from the
# start of a pull to join before their would-be share is fetched here.
DEFER_GRACE = 3.0
# Rounds of at least this many objects are logged (the files of a commit, mostly).
LOG_AT = 64
INFO_TIMEOUTS = Timeouts(connect=2.0, read=2.0, low_speed_time=2.0)
# A peer whose info does not answer this many times in a row is out of the split for the pull.
MAX_MISSES = 2


@dataclass(frozen=True)
class FleetOptions:
    """How a pull joins the LAN's machines: this node's id (the daemon's, shared by its commands)."""

    node_id: str


def fleet_options(config: Config, node_id: str | None = None) -> FleetOptions | None:
    """The fleet options of a pull on this machine: its daemon's node id (read from the state
    directory when not given), or None when ``[pull] coordinate`` is off or no daemon ever ran here."""
    if not config.pull.coordinate:
        return None
    if node_id is None:
        try:
            node_id = (config.state_dir / NODE_ID_FILE).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
    return FleetOptions(node_id) if node_id else None


def score(node_id: str, checksum: str) -> bytes:
    """The rendezvous weight of ``node_id`` for an object: the highest owns it."""
    return hashlib.blake2b(f"{node_id}/{checksum}".encode(), digest_size=8).digest()


def owner(checksum: str, members: Iterable[str]) -> str:
    """The member that fetches ``checksum`` from the origin."""
    return max(members, key=lambda m: (score(m, checksum), m))


@dataclass
class Fleet:
    """The split of one pull's commit between this node and the peers pulling it too.

    Lives for the whole pull; :meth:`fetch` runs once per set of objects (tree level, files).
    """

    me: str
    commit: str
    peers: list[PeerSource]
    origins: list[Source]
    sink: Sink
    parallel: int
    ref: str | None = None  # the ref being pulled, if any
    dropped: dict[str, str] = field(default_factory=dict)  # node id -> why, for the rest of the pull
    refreshed_at: float = float("-inf")
    started: float = field(default_factory=time.monotonic)
    answering: set[str] = field(default_factory=set)  # node ids whose info answered last time
    misses: dict[str, int] = field(default_factory=dict)  # node id -> info reads failed in a row

    @classmethod
    def of(
        cls, me: str, commit: str, ref: str | None, sources: Sequence[Source], sink: Sink, parallel: int
    ) -> Fleet | None:
        """The fleet of a pull, or None when it does not apply: no origin, or no other peer."""
        origins = [s for s in sources if s.kind == "archive" and s.usable]
        peers = [
            s for s in sources if isinstance(s, PeerSource) and s.usable and s.node_id and s.node_id != me
        ]
        if not origins or not peers:
            return None
        return cls(me, commit, peers, origins, sink, parallel, ref)

    async def fetch(self, names: Sequence[ObjectName]) -> dict[ObjectName, list[str]]:
        """Store ``names``, split with the other members; returns those no origin could provide."""
        return await _Round(self, names).run()

    def candidates(self) -> list[PeerSource]:
        """Peers that may still be members."""
        return [p for p in self.peers if p.usable and p.node_id not in self.dropped]

    def drop(self, node: str, why: str) -> None:
        """Leave ``node`` out of the split for the rest of the pull."""
        if node not in self.dropped:
            self.dropped[node] = why
            log.info("%s: taking over its share of %s: %s", node, self.commit[:12], why)


class _Round:
    """One :meth:`Fleet.fetch`: the objects, their owners, and the tasks fetching them."""

    def __init__(self, fleet: Fleet, names: Sequence[ObjectName]) -> None:
        self.fleet = fleet
        self.pending: dict[ObjectName, None] = dict.fromkeys(names)
        self.unavailable: dict[ObjectName, list[str]] = {}
        self.in_flight: set[ObjectName] = set()  # from the origin
        self.asked: set[ObjectName] = set()  # in a request to a member
        self.members: dict[str, PeerSource] = {}
        self.buckets: dict[str, list[ObjectName]] = {}
        self.cursor = 0  # into my own bucket: the next object to consider
        self.progress_at: dict[str, float] = {}
        self.swept: set[str] = set()
        self.changed = asyncio.Event()
        self.pollers: dict[str, asyncio.Task[None]] = {}
        self.ended: list[asyncio.Task[None]] = []  # pollers replaced, still to be awaited
        self.holder_mode = False  # members hold the whole commit: nothing from the origin
        self.started = time.monotonic()
        self.stats = [0, 0]  # objects from the origin, from peers
        self.deferred: set[ObjectName] = set()
        # A peer switched on a little later than this one gets DEFER_GRACE from the start of the
        # pull to join before this node fetches what would be that peer's share.
        self.defer_until = fleet.started + DEFER_GRACE
        self.swept_at = 0.0

    # -- the round -------------------------------------------------------------------------

    async def run(self) -> dict[ObjectName, list[str]]:
        await self._refresh()
        self._assign()
        if len(self.pending) >= LOG_AT:
            log.info(
                "%s: %d objects to fetch, split with %d peers (%d more answering)",
                self.fleet.commit[:12], len(self.pending), len(self.members),
                len(self.fleet.answering) - len(self.members),
            )  # fmt: skip
        workers = [asyncio.create_task(self._origin_worker()) for _ in range(self.fleet.parallel)]
        refresher = asyncio.create_task(self._refresh_loop())
        try:
            while self.pending:
                for task in [*workers, refresher, *self.pollers.values()]:
                    if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                        raise error  # a local write error, or a bug: the pull fails as it would alone
                self._check_stalls()
                await self._wait(0.25)
        finally:
            tasks = [*workers, refresher, *self.pollers.values(), *self.ended]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.stats[0] + self.stats[1] >= LOG_AT:
            log.info(
                "%s: %d objects from the origin, %d from peers (swept %d peers in %.1f s)",
                self.fleet.commit[:12], self.stats[0], self.stats[1], len(self.swept), self.swept_at,
            )  # fmt: skip
        return self.unavailable

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), seconds)
        self.changed.clear()

    def _wake(self) -> None:
        self.changed.set()

    async def _sink(
        self, source: Source, items: Sequence[tuple[ObjectName, bytes | BinaryIO]]
    ) -> tuple[int, CorruptObject | None]:
        stored, error = await self.fleet.sink(source, items)
        for name, _ in items[:stored]:
            self.pending.pop(name, None)
        self.stats[source.kind == "peer"] += stored
        if stored and source.node_id is not None and source.kind == "peer":
            self.progress_at[source.node_id] = time.monotonic()
        if stored:
            self._wake()
        return stored, error

    # -- membership ------------------------------------------------------------------------

    async def _refresh(self, *, force: bool = True) -> None:
        """Read every candidate's info again (unless read within INFO_EVERY) and recompute the members."""
        fleet = self.fleet
        if force or time.monotonic() - fleet.refreshed_at >= INFO_EVERY:
            candidates = fleet.candidates()
            answers = await asyncio.gather(*(p.refresh_info(INFO_TIMEOUTS) for p in candidates))
            fleet.refreshed_at = time.monotonic()
            fleet.answering = set()
            for peer, ok in zip(candidates, answers, strict=True):
                node = peer.node_id or ""
                fleet.misses[node] = 0 if ok else fleet.misses.get(node, 0) + 1
                if ok:
                    fleet.answering.add(node)
                elif fleet.misses[node] >= MAX_MISSES:
                    fleet.drop(node, f"its info did not answer {MAX_MISSES} times in a row")
        live = [p for p in fleet.candidates() if p.node_id in fleet.answering]
        holders = {p.node_id: p for p in live if p.node_id and p.holds_complete(fleet.commit)}
        fetchers = {p.node_id: p for p in live if p.node_id and fleet.commit in p.fetching}
        members = holders or fetchers
        if members.keys() != self.members.keys() or bool(holders) != self.holder_mode:
            if len(self.pending) >= LOG_AT:
                log.info(
                    "%s: %s now %s (%d objects left)", fleet.commit[:12],
                    "holders" if holders else "fetching", ", ".join(m[:8] for m in members) or "none",
                    len(self.pending),
                )  # fmt: skip
            self.members, self.holder_mode = members, bool(holders)
            self._assign()

    def _member_ids(self) -> list[str]:
        # Peers holding the whole commit serve everything: this node fetches nothing from the origin.
        return list(self.members) if self.holder_mode else [self.fleet.me, *self.members]

    def _assign(self) -> None:
        ids = self._member_ids()
        now = time.monotonic()
        before = {m: any(n in self.pending for n in b) for m, b in self.buckets.items()}
        buckets: dict[str, list[ObjectName]] = {m: [] for m in ids}
        # Peers that answer but do not fetch this commit (yet: they may be about to) would own some
        # objects: this node fetches those last, so that a peer joining a moment later finds them
        # still to do, instead of both fetching them.
        waiting = [] if self.holder_mode else sorted(self._likely_to_join(set(ids)))
        deferred: list[ObjectName] = []
        for name in self.pending:
            first = owner(name.checksum, [*ids, *waiting])
            if first in buckets:
                buckets[first].append(name)
            else:
                deferred.append(name)
        if self.fleet.me in buckets:
            buckets[self.fleet.me] += deferred
        self.deferred = set(deferred)
        self.buckets = buckets
        self.cursor = 0
        for member, bucket in buckets.items():
            if bucket and not before.get(member):
                self.progress_at[member] = now  # its wait starts now
        for member, source in self.members.items():
            if member not in self.pollers or self.pollers[member].done():
                self.ended += [self.pollers[member]] if member in self.pollers else []
                self.pollers[member] = asyncio.create_task(self._poll(member, source))
        if len(ids) > 1:
            shares = ", ".join(f"{m[:8]}: {len(b)}" for m, b in buckets.items())
            log.debug("%s: %d objects split: %s", self.fleet.commit[:12], len(self.pending), shares)
        self._wake()

    def _likely_to_join(self, members: set[str]) -> set[str]:
        """Answering peers not pulling the commit that may start to: fresh machines (no refs yet)
        and machines holding the ref being pulled (at an older commit)."""
        fleet = self.fleet
        return {
            p.node_id
            for p in fleet.candidates()
            if p.node_id is not None
            and p.node_id in fleet.answering
            and p.node_id not in members
            and (not p.refs or (fleet.ref is not None and fleet.ref in p.refs))
        }

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(INFO_EVERY)
            await self._refresh()

    def _check_stalls(self) -> None:
        now = time.monotonic()
        for member in list(self.members):
            waiting = any(n in self.pending for n in self.buckets.get(member, ()))
            if waiting and now - self.progress_at.get(member, now) > STALL_AFTER:
                self._drop(member, f"served nothing of its share for {STALL_AFTER:.0f} s")

    def _drop(self, member: str, why: str) -> None:
        self.fleet.drop(member, why)
        if self.members.pop(member, None) is not None:
            task = self.pollers.get(member)
            if task is not None:
                task.cancel()  # awaited with the others when the round ends
            self._assign()

    # -- fetching --------------------------------------------------------------------------

    def _next_mine(self) -> ObjectName | None:
        bucket = self.buckets.get(self.fleet.me, [])
        for _ in range(2):
            while self.cursor < len(bucket):
                name = bucket[self.cursor]
                if name in self.deferred and time.monotonic() < self.defer_until:
                    return None  # the deferred tail waits for the peers that may still join
                self.cursor += 1
                if name in self.pending and name not in self.in_flight and name not in self.asked:
                    return name
            # At the end: objects passed over while a member was asked for them may be left.
            bucket[:] = [n for n in bucket if n in self.pending]
            self.cursor = 0
        return None

    def _sweeping(self) -> bool:
        return time.monotonic() - self.started < SWEEP_WAIT and not self.swept >= set(self.members)

    async def _origin_worker(self) -> None:
        """Fetch this node's share from the origin(s), one object at a time, in walk order."""
        while self.pending:
            name = None if self._sweeping() else self._next_mine()
            if name is None:
                await self._wait(0.2)
                continue
            self.in_flight.add(name)
            try:
                reasons: list[str] = []
                for origin in self.fleet.origins:
                    if not origin.usable:
                        reasons.append(f"{origin.name}: not used ({origin.failure})")
                        continue
                    missing = await origin.fetch([name], self._sink, 1)
                    if name not in missing:
                        break
                    reasons.append(f"{origin.name}: {missing[name]}")
                else:
                    self.unavailable[name] = reasons
                    self.pending.pop(name, None)
            finally:
                self.in_flight.discard(name)

    async def _poll(self, member: str, source: PeerSource) -> None:
        """Ask ``member`` for its share (at first: for everything missing) until none is left."""
        delay = POLL_FIRST
        while self.pending and member in self.members:
            # Never what another request is bringing already: a duplicate costs a store.
            busy = self.in_flight | self.asked
            if member not in self.swept:
                want = [n for n in self.pending if n not in busy]
            else:
                bucket = self.buckets.get(member, [])
                want = [n for n in bucket if n in self.pending and n not in busy][:MAX_BATCH_OBJECTS]
            got = 0
            if want:
                self.asked.update(want)
                try:
                    missing = await source.fetch(want, self._sink, 1)
                finally:
                    self.asked.difference_update(want)
                got = len(want) - len(missing)
            if member not in self.swept:
                self.swept.add(member)
                self.swept_at = time.monotonic() - self.started
            if not source.usable:
                self._drop(member, f"failed: {source.failure}")
                return
            if got:
                delay = POLL_FIRST
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
