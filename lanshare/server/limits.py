"""What the LAN listener allows a peer: request sizes, timeouts, concurrency and upload rate.

Upload rate is a per-peer token bucket (keyed by remote IP and shared by that peer's concurrent
responses), so a peer cannot multiply its share by opening more connections.  Every body byte the
listener sends is paced and counted by the :class:`PeerLedger`; streamed bodies go through
:class:`BodyWriter`, which adds a stall timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from lanshare import wire
from lanshare.config import SharingConfig


@dataclass(frozen=True)
class LanLimits:
    """Bounds on what one LAN listener accepts and sends."""

    # Requests handled at once; the next one gets 503 + Retry-After instead of a queue.
    max_connections: int = 64
    # Bytes per second per peer IP; None: unlimited (and files go out with sendfile).
    max_upload_rate: int | None = None
    max_request_bytes: int = wire.MAX_REQUEST_BYTES
    max_batch_objects: int = wire.MAX_BATCH_OBJECTS
    # Batch responses being streamed at once (more wait their turn): each holds at most two groups
    # of records in memory, a group about 256 KiB (objects over batch.BATCH_OBJECT_BYTES go by
    # sendfile): at most ~16 MiB in all.  A classroom is 8 peers with several requests each; a
    # peer that reads slowly must not keep the others waiting for a free stream.
    max_batch_streams: int = 32
    # An idle connection, or one still sending its request headers, is closed after this long
    # from its start or its last response: slow headers cannot pin a connection.
    keepalive_timeout: float = 15.0
    # Time allowed to receive a request body (at most max_request_bytes).
    body_timeout: float = 30.0
    # A peer that accepts no bytes for this long is disconnected.
    send_timeout: float = 60.0
    # In-flight responses get this long to finish when the daemon stops.
    shutdown_timeout: float = 10.0
    retry_after: int = 1

    @classmethod
    def from_config(cls, sharing: SharingConfig) -> LanLimits:
        """Limits from ``[sharing]``; the rest keep their defaults."""
        return cls(max_connections=sharing.max_connections, max_upload_rate=sharing.max_upload_rate)

    def runner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the ``web.AppRunner`` (or test server) of the listener."""
        # No access log: a pull fetches thousands of objects, one line each would flood the journal.
        # A short lingering close: after an early error answer, a peer still sending its body gets
        # 2 s (not aiohttp's 10) before the connection goes.
        return {
            "keepalive_timeout": self.keepalive_timeout,
            "shutdown_timeout": self.shutdown_timeout,
            "lingering_time": 2.0,
            "access_log": None,
            "logger": PEER_ERRORS_LOG,
        }

    @property
    def chunk_size(self) -> int:
        """Bytes per write: small enough under a rate limit that the bucket paces smoothly."""
        if self.max_upload_rate is None:
            return 256 * 1024
        return max(1024, min(64 * 1024, self.max_upload_rate // 20))


class _QuietMalformedRequests(logging.Filter):
    """A peer's malformed request (bad header, chunk, length…) is logged once as one WARNING line.

    aiohttp logs each at ERROR with a traceback: a hostile peer could fill the journal with them.
    Later ones go at DEBUG; errors in lanshare's own handlers keep their traceback.
    """

    def __init__(self) -> None:
        super().__init__()
        self._warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        first_line = (error.message or type(error).__name__).strip().splitlines()[0][:200]
        record.msg = f"{record.getMessage()}: malformed request ({error.code}): {first_line}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        if not self._warned:
            self._warned = True
            record.msg += " (further malformed requests are logged at DEBUG)"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


# The LAN listener's server logger (aiohttp's "aiohttp.server" logs every bad request with a traceback).
PEER_ERRORS_LOG = logging.getLogger("lanshare.server.peers")
PEER_ERRORS_LOG.addFilter(_QuietMalformedRequests())


# Bytes per sendfile call: each call gets the stall timeout, so a peer that stops reading is dropped.
SENDFILE_PIECE = 4 * 1024 * 1024


class TokenBucket:
    """A byte-rate limiter (GCRA form): callers reserve in turn and sleep off any debt."""

    def __init__(self, rate: int, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._free_at = 0.0  # when the bucket would be full again

    def idle(self, now: float) -> bool:
        """True once the bucket is full, so forgetting it changes nothing."""
        return self._free_at <= now

    async def consume(self, count: int) -> None:
        """Wait until ``count`` bytes may go out."""
        now = time.monotonic()
        self._free_at = max(self._free_at, now) + count / self.rate
        delay = self._free_at - now - self.burst / self.rate
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class PeerStats:
    """What one peer IP received from this listener."""

    bytes_out: int = 0
    requests: int = 0


@dataclass
class PeerLedger:
    """Per-peer rate buckets and byte counters (in memory; the daemon may persist the counters)."""

    limits: LanLimits
    stats: dict[str, PeerStats] = field(default_factory=dict)
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    # A hostile LAN can spray source addresses; idle buckets are dropped beyond this many.
    MAX_BUCKETS = 1024

    def bucket(self, peer: str) -> TokenBucket | None:
        """The peer's shared bucket, or None when uploads are not rate-limited."""
        rate = self.limits.max_upload_rate
        if rate is None:
            return None
        found = self._buckets.get(peer)
        if found is None:
            if len(self._buckets) >= self.MAX_BUCKETS:
                now = time.monotonic()
                self._buckets = {ip: b for ip, b in self._buckets.items() if not b.idle(now)}
            found = self._buckets[peer] = TokenBucket(rate, self.limits.chunk_size)
        return found

    async def pace(self, peer: str, count: int) -> None:
        """Wait for the peer's rate limit to allow ``count`` more bytes, and count them as sent."""
        bucket = self.bucket(peer)
        if bucket is not None:
            await bucket.consume(count)
        self.count_bytes(peer, count)

    def count_request(self, peer: str) -> None:
        """Count one request from ``peer``."""
        self._stats(peer).requests += 1

    def count_bytes(self, peer: str, count: int) -> None:
        """Count body bytes sent to ``peer``."""
        self._stats(peer).bytes_out += count

    def _stats(self, peer: str) -> PeerStats:
        # get first: setdefault would build a PeerStats on every request (this runs on each one).
        stats = self.stats.get(peer)
        if stats is None:
            stats = self.stats[peer] = PeerStats()
        return stats

    def snapshot(self) -> dict[str, PeerStats]:
        """A copy of the counters, per peer IP."""
        return {ip: PeerStats(s.bytes_out, s.requests) for ip, s in self.stats.items()}


class BodyAborted(Exception):
    """A response body cannot be completed (the peer stopped reading or left): drop the connection."""


class BodyWriter:
    """Writes a response body under the peer's rate limit and stall timeout, counting bytes."""

    def __init__(self, request: web.BaseRequest, response: web.StreamResponse, ledger: PeerLedger) -> None:
        self.request = request
        self.response = response
        self.ledger = ledger
        self.peer = peer_of(request)
        self.bucket = ledger.bucket(self.peer)
        self.timeout = ledger.limits.send_timeout

    async def write(self, data: bytes) -> None:
        """Send ``data`` in rate-sized slices; raises BodyAborted if the peer stops reading."""
        step = self.ledger.limits.chunk_size if self.bucket else len(data) or 1
        view = memoryview(data)
        for start in range(0, len(data), step):
            piece = view[start : start + step]
            if self.bucket is not None:
                await self.bucket.consume(len(piece))
            try:
                async with asyncio.timeout(self.timeout):
                    await self.response.write(piece)
            except (TimeoutError, ConnectionError) as e:
                raise BodyAborted(str(e)) from None
            self.ledger.count_bytes(self.peer, len(piece))

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send part of an open file: with the kernel's sendfile, in pieces bounded by the stall
        timeout, where the loop has it (asyncio's); else read and written (uvloop's has none)."""
        loop = asyncio.get_running_loop()
        if not _has_sendfile(loop):
            await self.copy(fd, offset, count)
            return
        # loop.sendfile wants a file object; this one leaves the caller's descriptor open.
        with open(fd, "rb", closefd=False) as fileobj:
            end = offset + count
            while offset < end:
                size = min(SENDFILE_PIECE, end - offset)
                try:
                    await self._sendfile_piece(loop, fileobj, offset, size)
                except NotImplementedError:
                    # Raised before a byte is sent: this transport cannot (a loop we did not know).
                    _NO_SENDFILE.add(type(loop))
                    await self.copy(fd, offset, end - offset)
                    return
                offset += size

    async def _sendfile_piece(
        self, loop: asyncio.AbstractEventLoop, fileobj: BinaryIO, offset: int, size: int
    ) -> None:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise BodyAborted("connection closed")
        try:
            async with asyncio.timeout(self.timeout):
                sent = await loop.sendfile(transport, fileobj, offset, size)
        except (TimeoutError, ConnectionError) as e:
            raise BodyAborted(str(e)) from None
        self.ledger.count_bytes(self.peer, sent)
        if sent < size:
            raise BodyAborted("file ended early")

    async def copy(self, fd: int, offset: int, count: int) -> None:
        """Send part of an open file read in chunks (in a worker thread: the disk may wait) and
        written through :meth:`write`: rate limit, stall timeout and counting as for any body."""
        loop = asyncio.get_running_loop()
        chunk = self.ledger.limits.chunk_size
        end = offset + count
        while offset < end:
            data = await loop.run_in_executor(None, os.pread, fd, min(chunk, end - offset), offset)
            if not data:
                # The file shrank under us (replaced objects are renamed, so this is a truncation).
                raise BodyAborted("file ended early")
            await self.write(data)
            offset += len(data)


# Loop classes whose sendfile raised NotImplementedError (uvloop's does not override it at all).
_NO_SENDFILE: set[type[asyncio.AbstractEventLoop]] = set()


def _has_sendfile(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop.sendfile`` may work: overridden, and it never raised NotImplementedError."""
    kind = type(loop)
    return kind not in _NO_SENDFILE and kind.sendfile is not asyncio.AbstractEventLoop.sendfile


def peer_of(request: web.BaseRequest) -> str:
    """The peer's IP address (what limits and counters are keyed by)."""
    return request.remote or "unknown"


def abort(request: web.BaseRequest) -> None:
    """Drop the connection: the response is cut short and the peer must see that, not a short body."""
    transport = request.transport
    if transport is not None:
        transport.abort()
