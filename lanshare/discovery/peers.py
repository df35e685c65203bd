"""The peer table: lanshare daemons seen on the LAN or configured, with their health and holdings.

Rows live in the index (:class:`~lanshare.index.models.Peer`), so ``lanshare peers`` and a pull
run from the command line read what the daemon learnt.  Liveness comes from HTTP, not from mDNS
(python-zeroconf keeps a crashed peer's browse entry for at least 1125 s): every few seconds the
daemon asks each peer for ``/lanshare/v1/info`` — a HEAD, and now and then (or after a miss) a GET
that also refreshes the holdings and checks the node id — and a peer that fails ``DOWN_AFTER``
checks in a row is marked down.  The pull engine writes to the same rows
(:mod:`lanshare.pull.records`): bytes, rate, and a back-off for a peer that failed or served bad
data, which a good health check does not lift before it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp
from sqlalchemy import Engine, delete, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from lanshare import wire
from lanshare.discovery.quiet_log import QuietLog
from lanshare.errors import Error
from lanshare.index.db import writer
from lanshare.index.models import Peer, utcnow
from lanshare.ostree.objects import is_checksum
from lanshare.pull.errors import SourceFailure
from lanshare.pull.http import Timeouts, check_status, request
from lanshare.pull.sources import SourceSpec, probe_info

log = logging.getLogger(__name__)
_quiet = QuietLog(log)

# How often each peer is checked, how long one check may take, and how many failed checks in a
# row make a peer down.  A down peer is checked less and less often, up to MAX_CHECK_INTERVAL.
CHECK_INTERVAL = 2.0
CHECK_TIMEOUT = 2.0
DOWN_AFTER = 3
MAX_CHECK_INTERVAL = 60.0
# Most checks are a HEAD of the info document (cheap for both sides); every this many checks,
# and whenever a peer did not answer, the whole document is fetched and the node id checked.
FULL_CHECK_EVERY = 15
# At most this many addresses are kept per peer, and this many checks run at once.
MAX_ADDRESSES = 8
_PARALLEL_CHECKS = 8

# The daemon's node id file in the state directory (lanshare.daemon.NODE_ID_FILE), and the file
# it writes once its LAN listener is up (lanshare.daemon.LAN_ADDRESS_FILE).
NODE_ID_FILE = "node-id"
LAN_ADDRESS_FILE = "lan-address"
# A command run while the daemon is younger than this waits for discovery to find a peer.
DISCOVERY_WAIT = 5.0
_NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_REFS = 10_000
_MAX_PULLED = 64

INFO_PATH = wire.API_PREFIX.lstrip("/") + "/info"

# Re-resolves a peer over mDNS: its current addresses, or () when nobody answers.
Resolver = Callable[[str], Awaitable[Sequence[str]]]


class BadPeerInfo(ValueError):
    """An info document that does not describe a lanshare peer."""


@dataclass(frozen=True)
class Sighting:
    """What we learnt about a peer at one moment: where it listens and what it holds."""

    node_id: str
    addresses: tuple[str, ...]
    port: int
    collection_id: str | None = None
    holdings: Mapping[str, str] = field(default_factory=dict)  # advertised ref -> commit
    holdings_digest: str | None = None
    newest_checkpoint: str | None = None
    pulled: Mapping[str, Mapping[str, int]] | None = None  # commit -> origin/peers bytes it reported


def _pulled(info: Mapping[str, object]) -> dict[str, dict[str, int]] | None:
    """The ``pulled`` report of an info document, checked (None when absent or malformed)."""
    raw = info.get("pulled")
    if not isinstance(raw, dict) or len(raw) > _MAX_PULLED:
        return None
    pulled: dict[str, dict[str, int]] = {}
    for commit, counts in raw.items():
        if not (isinstance(commit, str) and is_checksum(commit) and isinstance(counts, dict)):
            continue
        origin, peers = counts.get("origin"), counts.get("peers")
        if isinstance(origin, int) and isinstance(peers, int) and 0 <= origin < 2**62 and 0 <= peers < 2**62:
            pulled[commit] = {"origin": origin, "peers": peers}
    return pulled


def sighting_from_info(info: Mapping[str, object], addresses: Sequence[str], port: int) -> Sighting:
    """A sighting from a peer's ``/lanshare/v1/info`` document; BadPeerInfo if it is not one."""
    node_id = info.get("node_id")
    if not isinstance(node_id, str) or not _NODE_ID_RE.fullmatch(node_id):
        raise BadPeerInfo("info has no valid node_id")
    refs = info.get("refs")
    if not isinstance(refs, dict) or len(refs) > _MAX_REFS:
        raise BadPeerInfo("info has no refs table")
    holdings = {r: c for r, c in refs.items() if isinstance(r, str) and isinstance(c, str) and is_checksum(c)}
    collection_id = info.get("collection_id")
    digest = info.get("holdings_digest")
    newest = info.get("newest_checkpoint")
    return Sighting(
        node_id=node_id,
        addresses=tuple(addresses[:MAX_ADDRESSES]),
        port=port,
        collection_id=collection_id if isinstance(collection_id, str) and len(collection_id) <= 255 else None,
        holdings=holdings,
        holdings_digest=digest if isinstance(digest, str) and is_checksum(digest) else None,
        newest_checkpoint=newest if isinstance(newest, str) and is_checksum(newest) else None,
        pulled=_pulled(info),
    )


def peer_url(address: str, port: int) -> str:
    """The base URL of a peer's LAN listener (IPv6 literals in brackets)."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"http://[{address}]:{port}/"
    except ValueError:
        pass  # a host name, from a static peer URL
    return f"http://{address}:{port}/"


def health_label(peer: Peer, now: dt.datetime | None = None) -> str:
    """``up``, ``demoted`` (backing off after a failed or bad transfer) or ``down``."""
    now = now or utcnow()
    if peer.healthy:
        return "up"
    if peer.backoff_until is not None and peer.backoff_until > now:
        return "demoted"
    return "down"


class PeerTable:
    """The ``peers`` rows of the index; every method blocks (call it from a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Writes read first: on SQLite they must take the write lock up front, or a writer in
        # another process (a pull's recorder) can make them fail at once instead of waiting.
        self._writer = writer(engine)

    def record(self, sighting: Sighting) -> None:
        """Upsert a peer that just answered: where it is, what it holds, and that it is up."""
        now = utcnow()
        with Session(self._writer) as session, session.begin():
            peer = session.get(Peer, sighting.node_id)
            if peer is None:
                peer = Peer(node_id=sighting.node_id, failures=0, bytes_in=0, bytes_out=0, holdings={})
                session.add(peer)
            peer.addresses = list(sighting.addresses)
            peer.port = sighting.port
            peer.last_seen = now
            if sighting.holdings_digest is not None or sighting.holdings:
                peer.holdings = dict(sighting.holdings)
                peer.holdings_digest = sighting.holdings_digest
                peer.newest_checkpoint = sighting.newest_checkpoint
                peer.collection_id = sighting.collection_id
            if sighting.pulled is not None:
                peer.pulled = {c: dict(counts) for c, counts in sighting.pulled.items()}
            _mark_up(peer, now)

    def alive(self, node_id: str) -> None:
        """A known peer answered a light health check: seen now, up unless backing off."""
        with Session(self._writer) as session, session.begin():
            peer = session.get(Peer, node_id)
            if peer is not None:
                _mark_up(peer, utcnow())

    def seen(self, node_id: str, addresses: Sequence[str], port: int) -> bool:
        """mDNS still announces a known peer at these addresses; False if the peer is unknown."""
        with Session(self._writer) as session, session.begin():
            peer = session.get(Peer, node_id)
            if peer is None:
                return False
            peer.addresses = list(addresses[:MAX_ADDRESSES])
            peer.port = port
            return True

    def check_failed(self, node_id: str) -> int:
        """Count a failed health check; the peer is down after DOWN_AFTER in a row.  Returns the count."""
        with Session(self._writer) as session, session.begin():
            peer = session.get(Peer, node_id)
            if peer is None:
                return 0
            peer.failures = (peer.failures or 0) + 1
            if peer.failures >= DOWN_AFTER:
                peer.healthy = False
            return peer.failures

    def forget(self, node_id: str) -> None:
        """Remove a peer that left the LAN (its mDNS goodbye)."""
        with Session(self._writer) as session, session.begin():
            session.execute(delete(Peer).where(Peer.node_id == node_id))

    def peers(self) -> list[Peer]:
        """Every row, most recently seen first (detached: safe to read after the session)."""
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(Peer).order_by(Peer.last_seen.desc(), Peer.node_id)))


def _mark_up(peer: Peer, now: dt.datetime) -> None:
    peer.last_seen = now
    # A back-off after bad data outlasts good health checks: HTTP working proves nothing.
    if peer.backoff_until is None or peer.backoff_until <= now:
        peer.healthy, peer.failures, peer.backoff_until = True, 0, None


@dataclass
class _CheckState:
    next_check: float = 0.0
    failures: int = 0
    checks: int = 0


class HealthMonitor:
    """Checks every peer in the table over HTTP, re-resolving it over mDNS when it stops answering."""

    def __init__(
        self,
        table: PeerTable,
        own_node_id: str,
        static_urls: Sequence[str] = (),
        resolver: Resolver | None = None,
        interval: float = CHECK_INTERVAL,
        timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.table = table
        self.own_node_id = own_node_id
        self.static_urls = tuple(static_urls)
        self.resolver = resolver
        self.interval = interval
        self.timeouts = Timeouts(connect=timeout, read=timeout, low_speed_time=timeout)
        self._state: dict[str, _CheckState] = {}
        self._slots = asyncio.Semaphore(_PARALLEL_CHECKS)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Check peers forever (cancel to stop)."""
        while True:
            try:
                await self.check_round(session)
            except SQLAlchemyError as e:
                log.warning("peer health checks: cannot use the index: %s", e)
            except Exception:
                # A bug or an answer nobody foresaw must not end health checking for good.
                log.exception("peer health checks: round failed")
            await asyncio.sleep(self.interval)

    async def check_round(self, session: aiohttp.ClientSession) -> None:
        """Probe the static peers, then check every peer whose turn has come."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        jobs: list[Awaitable[None]] = [
            self._probe_static(session, url) for url in self.static_urls if self._due(f"url:{url}", now)
        ]
        for peer in await asyncio.to_thread(self.table.peers):
            if peer.node_id != self.own_node_id and self._due(peer.node_id, now):
                jobs.append(self._check(session, peer.node_id, tuple(peer.addresses), peer.port))
        await asyncio.gather(*jobs)

    def forget(self, node_id: str) -> None:
        """Drop what the monitor remembers of a peer that left."""
        self._state.pop(node_id, None)

    def _due(self, key: str, now: float) -> bool:
        return self._state.setdefault(key, _CheckState()).next_check <= now

    def _done(self, key: str, ok: bool) -> None:
        state = self._state.setdefault(key, _CheckState())
        state.failures = 0 if ok else state.failures + 1
        # Down peers are checked less and less often; a live one every interval.
        extra = max(state.failures - DOWN_AFTER + 1, 0)
        delay = min(self.interval * 2**extra, MAX_CHECK_INTERVAL)
        state.next_check = asyncio.get_running_loop().time() + delay

    async def _probe_static(self, session: aiohttp.ClientSession, url: str) -> None:
        """A static peer enters the table (under its node id) once it answers."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        sighting = await self.probe(session, url, [host], port)
        if sighting is not None and sighting.node_id != self.own_node_id:
            await asyncio.to_thread(self.table.record, sighting)
        self._done(f"url:{url}", sighting is not None)

    async def _answers(self, session: aiohttp.ClientSession, url: str) -> bool:
        """Whether the listener at ``url`` answers a HEAD of its info document with 200."""
        async with self._slots:
            try:
                async with request(session, "HEAD", urljoin(url, INFO_PATH), self.timeouts) as response:
                    return check_status(response)
            except SourceFailure:
                return False

    async def probe(
        self, session: aiohttp.ClientSession, url: str, addresses: Sequence[str], port: int
    ) -> Sighting | None:
        """GET a peer's info at ``url``; a sighting at ``addresses``, or None (logged quietly)."""
        async with self._slots:
            try:
                info = await probe_info(session, url, self.timeouts)
                return sighting_from_info(info, addresses, port)
            except SourceFailure as e:
                _quiet.warning(f"probe {url}", "peer at %s does not answer: %s", url, e.reason)
            except BadPeerInfo as e:
                _quiet.warning(f"info {url}", "peer at %s: %s; ignored", url, e)
            return None

    async def _check(
        self, session: aiohttp.ClientSession, node_id: str, addresses: tuple[str, ...], port: int
    ) -> None:
        state = self._state.setdefault(node_id, _CheckState())
        state.checks += 1
        light = state.failures == 0 and state.checks % FULL_CHECK_EVERY != 1
        if light and addresses and await self._answers(session, peer_url(addresses[0], port)):
            await asyncio.to_thread(self.table.alive, node_id)
            self._done(node_id, True)
            return
        sighting = await self.reach(session, node_id, addresses, port)
        if sighting is None and self.resolver is not None:
            # The peer may have moved (DHCP): ask mDNS where it is now, and try there.
            fresh = tuple(await self.resolver(node_id))
            if fresh and fresh != addresses:
                sighting = await self.reach(session, node_id, fresh, port)
        if sighting is not None:
            await asyncio.to_thread(self.table.record, sighting)
        else:
            failures = await asyncio.to_thread(self.table.check_failed, node_id)
            if failures == DOWN_AFTER:
                log.info("peer %s is down: %d health checks failed in a row", node_id, failures)
        self._done(node_id, sighting is not None)

    async def reach(
        self, session: aiohttp.ClientSession, node_id: str, addresses: Sequence[str], port: int
    ) -> Sighting | None:
        """The first address that answers as this node, moved to the front of the list."""
        for address in addresses:
            sighting = await self.probe(session, peer_url(address, port), addresses, port)
            if sighting is None:
                continue
            if sighting.node_id != node_id:
                _quiet.warning(
                    f"moved {node_id} {address}",
                    "%s answers as %s, not %s",
                    address,
                    sighting.node_id,
                    node_id,
                )
                continue
            rest = [a for a in addresses if a != address]
            return dataclasses.replace(sighting, addresses=(address, *rest))
        return None


@dataclass
class TablePeers:
    """The :class:`~lanshare.pull.sources.PeerProvider` of the peer table, with the static peers.

    Peers that are up come first, the recently fastest first; peers backing off after a failure
    come after them once their back-off ended; down peers are left out.  Static URLs follow, each
    once (a static peer already in the table under its address is not repeated).
    """

    database_url: str
    static_urls: tuple[str, ...] = ()
    state_dir: Path | None = None  # where the daemon keeps its node id: its own row is skipped
    # Commands wait for a young daemon's discovery; the daemon itself never blocks its loop on it.
    wait_for_discovery: bool = True
    _engine: Engine | None = None

    def peer_specs(self) -> Sequence[SourceSpec]:
        """The peers to try, best first.

        With nothing to offer while the daemon has been up less than :data:`DISCOVERY_WAIT`
        seconds (a command run right after boot), wait for discovery to find someone until then.
        """
        rows = self._ranked()
        if not rows and not self.static_urls and self.wait_for_discovery:
            rows = self._wait_for_discovery()
        specs = [SourceSpec(peer_url(p.addresses[0], p.port), "peer") for p in rows]
        return specs + [SourceSpec(url, "peer") for url in self.static_urls]

    def why_empty(self) -> str:
        """Why there is no peer to offer, for the "nothing to pull from" message."""
        age = self._daemon_age()
        if age is None:
            return "discovery is on, but no lanshare daemon runs here to discover peers"
        return f"no peer has been discovered yet (the daemon has looked for {age:.0f} s)"

    def _daemon_age(self) -> float | None:
        """Seconds since this machine's daemon started listening, or None when it does not run."""
        if self.state_dir is None:
            return None
        try:
            return max(time.time() - (self.state_dir / LAN_ADDRESS_FILE).stat().st_mtime, 0.0)
        except OSError:
            return None

    def _wait_for_discovery(self) -> list[Peer]:
        rows: list[Peer] = []
        while not rows and (age := self._daemon_age()) is not None and age < DISCOVERY_WAIT:
            time.sleep(min(0.25, DISCOVERY_WAIT - age))
            rows = self._ranked()
        return rows

    def _ranked(self) -> list[Peer]:
        try:
            if self._engine is None:
                if _missing_sqlite_file(self.database_url):
                    return []  # no daemon ever ran here: no table, and none to create
                from lanshare.index.db import open_index

                self._engine = open_index(self.database_url)
            rows = PeerTable(self._engine).peers()
        except (Error, SQLAlchemyError) as e:
            # The peer table only helps: static peers still work without it.
            _quiet.warning("table", "cannot read the peer table: %s", e)
            return []
        now = utcnow()
        own = self._own_node_id()
        usable = [
            p
            for p in rows
            if p.addresses
            and p.node_id != own
            and (p.healthy or (p.backoff_until is not None and p.backoff_until <= now))
        ]
        return sorted(usable, key=lambda p: (not p.healthy, -(p.last_rate or 0.0), -p.last_seen.timestamp()))

    def _own_node_id(self) -> str | None:
        if self.state_dir is None:
            return None
        try:
            return (self.state_dir / NODE_ID_FILE).read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None


def _missing_sqlite_file(url: str) -> bool:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return False
    return not Path(database).exists()
