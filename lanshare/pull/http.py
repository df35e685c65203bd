"""HTTP plumbing shared by every source: timeouts, a stall detector and bounded bodies."""

from __future__ import annotations

import asyncio
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import aiohttp

from lanshare.errors import CorruptObject
from lanshare.ostree import content
from lanshare.ostree.objects import MAX_METADATA_SIZE
from lanshare.ostree.unnamed import open_unnamed
from lanshare.pull.errors import LocalWriteError, SourceFailure

# Objects up to this size stay in memory between download and verification; larger ones spool
# to an unlinked file in the repository's tmp/ (same filesystem, cleaned up by the kernel).
SPOOL_IN_MEMORY = 1024 * 1024
# Refs, info documents and summaries are small; anything bigger is not what we asked for.
MAX_SMALL_DOCUMENT = 64 * 1024 * 1024
# The framed header at the start of every .filez: 8 bytes of framing, then at most this much.
_MAX_FILEZ_HEAD = 8 + content.MAX_HEADER_SIZE


@dataclass(frozen=True)
class Timeouts:
    """How long a source may take before it is abandoned (defaults as libostree's fetcher)."""

    connect: float = 10.0
    # No byte at all for this long: the server is gone.
    read: float = 30.0
    # A server that trickles bytes never trips ``read``: require this average rate over each
    # ``low_speed_time`` window (libostree: 1000 bytes/s over 30 s).
    low_speed_limit: int = 1000
    low_speed_time: float = 30.0

    def client_timeout(self) -> aiohttp.ClientTimeout:
        """The session-wide aiohttp timeout (no total: a big object may legitimately take long)."""
        return aiohttp.ClientTimeout(total=None, sock_connect=self.connect, sock_read=self.read)


def transport_failure(error: BaseException) -> SourceFailure:
    """A one-line reason for a network-level exception."""
    if isinstance(error, aiohttp.ClientPayloadError):
        return SourceFailure(f"truncated response ({error})")
    if isinstance(error, aiohttp.ClientResponseError):
        return SourceFailure(f"HTTP {error.status} {error.message}")
    if isinstance(error, TimeoutError):
        return SourceFailure("timed out waiting for data")
    if isinstance(error, aiohttp.ClientConnectorError):
        return SourceFailure(f"cannot connect: {error.os_error.strerror or error.os_error}")
    return SourceFailure(f"{type(error).__name__}: {error}".rstrip(": "))


async def read_body(
    response: aiohttp.ClientResponse, timeouts: Timeouts, on_chunk: Callable[[bytes], Awaitable[None]]
) -> None:
    """Feed the body to ``on_chunk``; raise SourceFailure if it stalls below the low-speed limit."""
    loop = asyncio.get_running_loop()
    window_start, window_bytes = loop.time(), 0
    while True:
        deadline = window_start + timeouts.low_speed_time
        chunk: bytes | None = None
        stall = asyncio.timeout_at(deadline)
        try:
            async with stall:
                chunk = await response.content.readany()
        except TimeoutError:
            # aiohttp's own sock_read timeout is a TimeoutError too: only ours means "too slow".
            if not stall.expired():
                raise
        if chunk is not None:
            if not chunk:
                return
            window_bytes += len(chunk)
            await on_chunk(chunk)
        now = loop.time()
        if now >= deadline:
            if window_bytes < timeouts.low_speed_limit * timeouts.low_speed_time:
                raise SourceFailure(
                    f"too slow: {window_bytes} bytes in {timeouts.low_speed_time:g} s "
                    f"(minimum {timeouts.low_speed_limit} bytes/s)"
                )
            window_start, window_bytes = now, 0


def deflate_bound(size: int) -> int:
    """An upper bound on the raw-deflate size of ``size`` bytes (zlib's deflateBound, with slack)."""
    return size + (size >> 8) + 1024


class ObjectBuffer:
    """A downloaded object, kept in memory or spooled to tmp/, refusing to grow past its limit.

    Past :data:`SPOOL_IN_MEMORY` it moves to an unnamed file in the repository's tmp/ (same
    filesystem; the kernel drops it with its descriptor), which :meth:`Repo.write_filez` can then
    verify and give its object name in place instead of copying it."""

    def __init__(self, where: str, tmp_dir: Path, *, filez: bool) -> None:
        self.where = where
        self.size = 0
        # A metadata object has a hard cap; a .filez one's cap comes from its own header,
        # so an endless stream is cut off once it passes what the header declared.
        self._limit = _MAX_FILEZ_HEAD if filez else MAX_METADATA_SIZE
        self._limit_known = not filez
        self._head = bytearray()
        self._tmp_dir = tmp_dir
        self._memory = bytearray()
        self._file: IO[bytes] | None = None

    def write(self, chunk: bytes) -> None:
        """Append a chunk; raises CorruptObject once the object is longer than it can be."""
        self.size += len(chunk)
        if not self._limit_known:
            self._head += chunk[: _MAX_FILEZ_HEAD - len(self._head)]
            self._learn_limit()
        if self.size > self._limit:
            raise CorruptObject(self.where, f"longer than the {self._limit} bytes it can be")
        if self._file is None and self.size <= SPOOL_IN_MEMORY:
            self._memory += chunk
            return
        try:
            if self._file is None:
                self._file = self._spool_file()
                self._file.write(self._memory)
                self._memory = bytearray()
            self._file.write(chunk)
        except OSError as e:
            # Our disk, not the source: must not be mistaken for a network failure and demote it.
            raise LocalWriteError(f"{self.where}: {e.strerror or e}") from None

    def _spool_file(self) -> IO[bytes]:
        """An unnamed file that can be named later, else any temporary file."""
        fd = open_unnamed(str(self._tmp_dir))
        if fd is None:
            return tempfile.TemporaryFile(dir=self._tmp_dir)
        return open(fd, "w+b")

    async def write_async(self, chunk: bytes) -> None:
        """:meth:`write` as a body callback."""
        self.write(chunk)

    def _learn_limit(self) -> None:
        if len(self._head) < 8:
            return
        (length,) = struct.unpack(">I", self._head[:4])
        if length > content.MAX_HEADER_SIZE:
            raise CorruptObject(self.where, f"file header claims {length} bytes")
        if len(self._head) < 8 + length:
            return
        header = content.parse_archive_header(bytes(self._head[8 : 8 + length]), self.where)
        self._limit = 8 + length + deflate_bound(header.size)
        self._limit_known = True

    def payload(self) -> bytes | BinaryIO:
        """The whole object: its bytes when it stayed in memory, else its spool file at its start."""
        if self._file is None:
            return bytes(self._memory)
        self._file.flush()
        self._file.seek(0)
        return cast(BinaryIO, self._file)

    def getvalue(self) -> bytes:
        """The whole object as bytes (metadata objects)."""
        payload = self.payload()
        return payload if isinstance(payload, bytes) else payload.read()

    def close(self) -> None:
        """Drop the buffer (and its spool file)."""
        self._memory = bytearray()
        if self._file is not None:
            self._file.close()


# A busy server (503, 429) or a keep-alive connection the server closed just as we reused it
# is not a broken source: retry a couple of times before giving up on it.
RETRIES = 2
_BUSY = (429, 503)
_MAX_RETRY_WAIT = 5.0


async def _send(
    session: aiohttp.ClientSession, method: str, url: str, timeouts: Timeouts, kwargs: dict[str, Any]
) -> aiohttp.ClientResponse:
    for attempt in range(RETRIES + 1):
        last = attempt == RETRIES
        try:
            # Bounds the wait for the status line and headers, which could otherwise be dripped.
            async with asyncio.timeout(timeouts.read):
                response = await session.request(method, url, **kwargs)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:  # timeouts excluded
            if last:
                raise transport_failure(e) from None
            await asyncio.sleep(0.1 * 2**attempt)
            continue
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise transport_failure(e) from None
        if response.status not in _BUSY or last:
            return response
        wait = _retry_after(response.headers.get("Retry-After"))
        response.close()
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (seconds form only), capped."""
    try:
        return min(max(float(value or 1), 0.0), _MAX_RETRY_WAIT)
    except ValueError:
        return 1.0


@asynccontextmanager
async def request(
    session: aiohttp.ClientSession, method: str, url: str, timeouts: Timeouts, **kwargs: Any
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send a request; every network problem while it is open surfaces as SourceFailure."""
    response = await _send(session, method, url, timeouts, kwargs)
    try:
        yield response
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        response.close()
        raise transport_failure(e) from None
    except BaseException:
        # Whatever was left unread must not be handed to the next request on this connection.
        response.close()
        raise
    else:
        response.release()


def check_status(response: aiohttp.ClientResponse) -> bool:
    """True for 200, False for "not here" (404/410); any other status is a SourceFailure."""
    if response.status in (404, 410):
        return False
    if response.status != 200:
        raise SourceFailure(f"HTTP {response.status} {response.reason or ''}".rstrip())
    return True


async def fetch_small(
    session: aiohttp.ClientSession, url: str, timeouts: Timeouts, limit: int = MAX_SMALL_DOCUMENT
) -> bytes | None:
    """GET a small document; None on 404/410, SourceFailure on any other problem."""
    parts: list[bytes] = []
    size = 0

    async def collect(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > limit:
            raise SourceFailure(f"response larger than {limit} bytes", bad_data=True)
        parts.append(chunk)

    async with request(session, "GET", url, timeouts) as response:
        if not check_status(response):
            return None
        await read_body(response, timeouts, collect)
    return b"".join(parts)
