"""What a pull writes to the index: its lease, its transfer row and the health of the peers it used.

Every method is a no-op without an index, so the engine also runs on a bare ``--repo``.  Database
calls block, so they run in worker threads; progress is written at most once a second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from lanshare.index.db import writer
from lanshare.index.holders import this_process
from lanshare.index.models import Lease, Peer, Transfer, TransferState, utcnow

log = logging.getLogger(__name__)

LEASE_TTL = dt.timedelta(minutes=15)
# A peer that failed waits 30 s, doubling per consecutive failure, up to an hour.
BACKOFF_BASE = dt.timedelta(seconds=30)
BACKOFF_MAX = dt.timedelta(hours=1)
_PROGRESS_INTERVAL = 1.0


@dataclass(frozen=True)
class PeerKey:
    """How a peer is named in the index: its node id when it told us, else its URL."""

    node_id: str
    host: str
    port: int

    @classmethod
    def of(cls, node_id: str | None, url: str) -> PeerKey:
        """The key for a peer at ``url``."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(node_id or url, parts.hostname or "", port)


def backoff(failures: int) -> dt.timedelta:
    """How long a peer with ``failures`` consecutive failures is tried last."""
    seconds = BACKOFF_BASE.total_seconds() * 2 ** min(max(failures - 1, 0), 32)
    return min(dt.timedelta(seconds=seconds), BACKOFF_MAX)


class Recorder:
    """The index rows of one pull."""

    def __init__(self, engine: Engine | None, lease_ttl: dt.timedelta = LEASE_TTL) -> None:
        self.engine = engine
        self.lease_ttl = lease_ttl
        self.holder = f"pull {os.getpid()}@{socket.gethostname()}"[:255]
        self._lease_id: int | None = None
        self._transfer_id: int | None = None
        self._last_progress = 0.0
        self._pending: set[asyncio.Task[None]] = set()

    # -- lease and transfer ----------------------------------------------------------------

    async def start(self, commit: str, ref: str | None, source: str) -> None:
        """Lease the commit (prune keeps its closure) and open a running transfer row."""
        if self.engine is not None:
            await asyncio.to_thread(self._start, self.engine, commit, ref, source)

    def _start(self, engine: Engine, commit: str, ref: str | None, source: str) -> None:
        with Session(writer(engine)) as session, session.begin():
            me = this_process()
            lease = Lease(
                commit=commit,
                holder=self.holder,
                expires_at=utcnow() + self.lease_ttl,
                pid=me.pid,
                start_ticks=me.start_ticks,
                boot_id=me.boot_id,
                pid_ns=me.pid_ns,
                host=me.host,
            )
            transfer = Transfer(commit=commit, ref=ref, source=source[:1024], state=TransferState.RUNNING)
            session.add_all([lease, transfer])
            session.flush()
            self._lease_id, self._transfer_id = lease.id, transfer.id

    async def renew(self) -> None:
        """Push the lease's expiry out again (the engine calls this while it works)."""
        if self.engine is not None and self._lease_id is not None:
            await self._write(self._renew, self.engine, self._lease_id)

    def _renew(self, engine: Engine, lease_id: int) -> None:
        with Session(writer(engine)) as session, session.begin():
            lease = session.get(Lease, lease_id)
            if lease is not None:
                lease.expires_at = utcnow() + self.lease_ttl

    async def progress(
        self, objects_done: int, objects_total: int | None, bytes_done: int, *, force: bool = False
    ) -> None:
        """Record progress on the transfer row, at most once a second unless ``force``."""
        now = time.monotonic()
        if self.engine is None or self._transfer_id is None:
            return
        if not force and now - self._last_progress < _PROGRESS_INTERVAL:
            return
        self._last_progress = now
        await self._write(
            self._progress, self.engine, self._transfer_id, objects_done, objects_total, bytes_done
        )

    def _progress(
        self, engine: Engine, transfer_id: int, objects_done: int, objects_total: int | None, bytes_done: int
    ) -> None:
        with Session(writer(engine)) as session, session.begin():
            transfer = session.get(Transfer, transfer_id)
            if transfer is not None:
                transfer.objects_done, transfer.objects_total = objects_done, objects_total
                transfer.bytes_done = bytes_done

    async def split(self, origin: int, peers: int) -> None:
        """Record how many of the transfer's bytes came from the origin and from LAN peers."""
        if self.engine is not None and self._transfer_id is not None:
            await self._write(self._split, self.engine, self._transfer_id, origin, peers)

    def _split(self, engine: Engine, transfer_id: int, origin: int, peers: int) -> None:
        with Session(writer(engine)) as session, session.begin():
            transfer = session.get(Transfer, transfer_id)
            if transfer is not None:
                transfer.bytes_origin, transfer.bytes_peers = origin, peers

    async def drain(self) -> None:
        """Wait for the peer updates still being written."""
        if self._pending:
            await asyncio.gather(*self._pending)

    async def finish(
        self,
        source: str,
        error: str | None,
        progress: tuple[int, int | None, int] = (0, None, 0),
        split: tuple[int, int] = (0, 0),
    ) -> None:
        """Close the transfer row: done or failed, its last progress and its origin/peer byte split.

        One transaction, and the lease released in it.  A pull that failed (a full disk, say) may
        not be able to write it either: its own error is what a person needs, so that is logged
        below warnings."""
        await self.drain()
        if self.engine is not None and self._transfer_id is not None:
            await self._write(
                self._finish,
                self.engine,
                self._transfer_id,
                self._lease_id,
                source,
                error,
                progress,
                split,
                failing=error is not None,
            )

    def _finish(
        self,
        engine: Engine,
        transfer_id: int,
        lease_id: int | None,
        source: str,
        error: str | None,
        progress: tuple[int, int | None, int],
        split: tuple[int, int],
    ) -> None:
        with Session(writer(engine)) as session, session.begin():
            transfer = session.get(Transfer, transfer_id)
            if transfer is not None:
                transfer.objects_done, transfer.objects_total, transfer.bytes_done = progress
                transfer.bytes_origin, transfer.bytes_peers = split
                transfer.state = TransferState.FAILED if error else TransferState.DONE
                transfer.error = error
                transfer.finished_at = utcnow()
                transfer.source = source[:1024] or transfer.source
            if lease_id is not None:
                session.execute(delete(Lease).where(Lease.id == lease_id))

    # -- peers -----------------------------------------------------------------------------

    async def backoff_until(self, key: PeerKey) -> dt.datetime | None:
        """When the peer's back-off ends, if the index says it failed recently."""
        if self.engine is None:
            return None
        engine = self.engine

        def read() -> dt.datetime | None:
            with Session(engine) as session:
                return session.scalar(select(Peer.backoff_until).where(Peer.node_id == key.node_id))

        try:
            return await asyncio.to_thread(read)
        except SQLAlchemyError as e:
            log.warning("cannot read peer %s from the index: %s", key.node_id, e)
            return None

    def peer_failed(self, key: PeerKey) -> None:
        """Demote the peer in the index (in the background; :meth:`finish` waits for it)."""
        if self.engine is not None:
            task = asyncio.get_running_loop().create_task(self._write(self._peer_failed, self.engine, key))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _peer_failed(self, engine: Engine, key: PeerKey) -> None:
        with Session(writer(engine)) as session, session.begin():
            peer = _peer_row(session, key)
            peer.failures = (peer.failures or 0) + 1
            peer.healthy = False
            peer.backoff_until = utcnow() + backoff(peer.failures)

    async def peer_served(self, key: PeerKey, nbytes: int, rate: float | None) -> None:
        """A peer served part of this pull correctly: healthy again, with its rate."""
        if self.engine is not None:
            await self._write(self._peer_served, self.engine, key, nbytes, rate)

    def _peer_served(self, engine: Engine, key: PeerKey, nbytes: int, rate: float | None) -> None:
        with Session(writer(engine)) as session, session.begin():
            peer = _peer_row(session, key)
            peer.bytes_in = (peer.bytes_in or 0) + nbytes
            peer.last_seen = utcnow()
            if rate is not None:
                peer.last_rate = rate
            if peer.backoff_until is None or peer.backoff_until <= utcnow():
                peer.healthy, peer.failures, peer.backoff_until = True, 0, None

    async def _write(self, function: Callable[..., None], *args: object, failing: bool = False) -> None:
        # Bookkeeping must not fail a pull that is otherwise going well.
        try:
            await asyncio.to_thread(function, *args)
        except SQLAlchemyError as e:
            # SQLAlchemy's message spans lines (SQL, parameters, a link): the first says what failed.
            log.log(
                logging.INFO if failing else logging.WARNING,
                "could not update the index: %s",
                str(e).splitlines()[0],
            )


def _peer_row(session: Session, key: PeerKey) -> Peer:
    peer = session.get(Peer, key.node_id)
    if peer is None:
        peer = Peer(node_id=key.node_id, addresses=[key.host], port=key.port, failures=0, bytes_in=0)
        session.add(peer)
    return peer
