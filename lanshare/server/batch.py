"""``POST /lanshare/v1/objects``: many objects in one zstd stream, framed by :mod:`lanshare.wire`.

Objects are read and compressed in an encoder thread a group at a time, while the event loop sends
the previous group, so a large batch neither blocks other requests nor waits on the disk and the
network in turn.

Sized for a classroom (8 peers pulling at once, each with several batch requests in flight):
many streams may be open at once, each holding at most two small groups (256 KiB of records), so
a peer that reads slowly holds little memory and no encoder; encoding runs on one thread of its
own rather than on the shared default executor, so dozens of streams do not make dozens of
threads fight over the GIL at every read.  An object whose lookup is in the dentry cache is
opened with one openat2 call that keeps the GIL (:mod:`lanshare.server.opener`); others are
opened relative to the ``objects/`` directory, opened once per group.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import zstandard
from aiohttp import web

from lanshare import wire
from lanshare.server.limits import BodyAborted, BodyWriter, LanLimits, PeerLedger, abort
from lanshare.server.opener import DIR_FLAGS, FILE_FLAGS, CachedOpen, FileOpener

log = logging.getLogger(__name__)

# Uncompressed bytes read per encoder step: enough to amortise the thread hop (hundreds of small
# objects), small enough that the first bytes leave quickly and many streams stay cheap.
GROUP_BYTES = 256 * 1024
# Larger objects are answered TOO_LARGE, and the peer fetches them from the archive layout (sent
# with sendfile, never held in memory).  Batching is for many small objects; a batch of several
# MB objects held each one three times (read, framed, compressed) in every encoder, taking a
# daemon under 50 peers from 90 to 350 MB (bench/bench_load.py --mode batch).
BATCH_OBJECT_BYTES = 1024 * 1024


# One: an encoder is bound by the GIL (a few dozen Python steps per object), so a second one only
# trades the GIL with the first and the event loop (futex hand-offs were ~20% of the daemon's
# CPU); with one, its zstd calls (which release the GIL) still overlap the loop's sending.
# Measured with 8 peers fetching 5,261 small objects each (bench/bench_serve.py --batch-clients 8):
# ~22 us of daemon CPU per object with one thread, ~30-34 with two, the same wall time.
_ENCODER_THREADS = 1
_encoders: concurrent.futures.ThreadPoolExecutor | None = None


def _encoder_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _encoders
    if _encoders is None:
        _encoders = concurrent.futures.ThreadPoolExecutor(
            _ENCODER_THREADS, thread_name_prefix="lanshare-batch"
        )
    return _encoders


def open_objects_dir(root: Path) -> int:
    """``root/objects`` opened as a directory, following no symlink (objects are opened beneath it)."""
    root_fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        return os.open("objects", DIR_FLAGS, dir_fd=root_fd)
    finally:
        os.close(root_fd)


def read_object(objects_fd: int, name: wire.ObjectName) -> tuple[bytes | None, int]:
    """An object file's bytes and its wire status (PRESENT, ABSENT or TOO_LARGE).

    Opened beneath ``objects_fd`` (from :func:`open_objects_dir`) without following any symlink,
    and only if it is a regular file: whatever else is planted in the repository stays ABSENT.
    """
    try:
        dir_fd = os.open(name.checksum[:2], DIR_FLAGS, dir_fd=objects_fd)
        try:
            fd = os.open(f"{name.checksum[2:]}.{name.kind.value}", FILE_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        # Missing, a symlink (ELOOP), unreadable: all look the same to a peer.
        return None, wire.ABSENT
    return _read_open_object(fd, name)


def _read_open_object(fd: int, name: wire.ObjectName) -> tuple[bytes | None, int]:
    """:func:`read_object` once the file is open (``fd`` is closed here)."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, wire.ABSENT
        if st.st_size > min(BATCH_OBJECT_BYTES, wire.MAX_OBJECT_BYTES):
            return None, wire.TOO_LARGE
        # Sized by fstat: reading the limit would allocate it for every small object.
        data = os.read(fd, st.st_size + 1)
    except OSError as e:
        log.warning(
            "cannot read objects/%s/%s.%s: %s", name.checksum[:2], name.checksum[2:], name.kind.value, e
        )
        return None, wire.ABSENT
    finally:
        os.close(fd)
    # A file that changed size since fstat is not sent half-read: the archive path serves it.
    return (data, wire.PRESENT) if len(data) == st.st_size else (None, wire.TOO_LARGE)


class BatchEncoder:
    """The compressed batch stream for a list of names, produced a group at a time (not thread-safe)."""

    def __init__(
        self, root: Path, names: list[wire.ObjectName], open_cached: CachedOpen | None = None
    ) -> None:
        self._root = root
        # With openat2 (lanshare.server.opener.cached_opener for this resolved root), an object whose
        # lookup is cached is opened in one call that keeps the GIL, not three that each release it
        # (to as many threads waiting for it); the others are opened beneath objects/ as before.
        self._open_cached = open_cached
        self._objects_prefix = os.fsencode(root) + b"/objects/"
        self._names = names
        self._next = 0
        self._compressor = wire.compressor().compressobj()
        self._started = False
        self._finished = False

    def _open_from_cache(self, name: wire.ObjectName) -> int:
        """The object opened from cached lookups; _ELSEWHERE if that needs the disk, _ABSENT if none."""
        if self._open_cached is None:
            return _ELSEWHERE
        checksum = name.checksum
        try:
            return self._open_cached(
                self._objects_prefix + f"{checksum[:2]}/{checksum[2:]}.{name.kind.value}".encode()
            )
        except BlockingIOError:
            return _ELSEWHERE
        except OSError:
            return _ABSENT  # a symlink (ELOOP), not a directory...

    def next_group(self) -> bytes | None:
        """Compressed bytes for the next group of records (the end marker last); None when done."""
        if self._finished:
            return None
        out: list[bytes] = []
        if not self._started:
            out.append(self._compressor.compress(wire.MAGIC))
            self._started = True
        raw = 0
        records: list[bytes] = []
        objects_fd = _NOT_OPENED
        try:
            while self._next < len(self._names) and raw < GROUP_BYTES:
                name = self._names[self._next]
                self._next += 1
                fd = self._open_from_cache(name)
                if fd >= 0:
                    data, status = _read_open_object(fd, name)
                elif fd == _ELSEWHERE:
                    if objects_fd == _NOT_OPENED:
                        objects_fd = _open_objects_dir_or_none(self._root)
                    data, status = read_object(objects_fd, name) if objects_fd >= 0 else (None, wire.ABSENT)
                else:
                    data, status = None, wire.ABSENT
                records.append(wire.encode_record(name, data, status))
                raw += len(records[-1])
        finally:
            if objects_fd >= 0:
                os.close(objects_fd)
        # One compress call per group, not per record (a call costs more than a small record).
        out.append(self._compressor.compress(b"".join(records)))
        if self._next == len(self._names):
            out.append(self._compressor.compress(bytes([wire.END])))
            out.append(self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            self._finished = True
        else:
            # Flush the block so the peer can start verifying these objects while we read more.
            out.append(self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        return b"".join(out)


_NOT_OPENED = -2
# What _open_from_cache returns when the object must be opened the portable way.
_ELSEWHERE = -1
_ABSENT = -3


def _open_objects_dir_or_none(root: Path) -> int:
    try:
        return open_objects_dir(root)
    except OSError:
        return -1  # no objects/ at all: every record says ABSENT


def _closing(error: web.HTTPException) -> web.HTTPException:
    # The rest of the body was never read: the connection cannot carry another request.
    error.force_close()
    return error


async def read_batch_request(request: web.Request, limits: LanLimits) -> list[wire.ObjectName]:
    """Read and validate the JSON body; raises the HTTP error a bad request deserves."""
    body = await read_json_body(request, limits)
    objects = body.get("objects") if isinstance(body, dict) else None
    if isinstance(objects, list) and len(objects) > limits.max_batch_objects:
        raise web.HTTPRequestEntityTooLarge(
            limits.max_batch_objects,
            len(objects),
            text=f"at most {limits.max_batch_objects} objects per batch",
        )
    try:
        return wire.parse_request(body)
    except wire.WireError as e:
        raise web.HTTPBadRequest(text=str(e)) from None


async def read_json_body(request: web.Request, limits: LanLimits) -> object:
    """A request's JSON body, bounded in size and time; raises the HTTP error a bad one deserves."""
    if request.content_length is not None and request.content_length > limits.max_request_bytes:
        raise _closing(web.HTTPRequestEntityTooLarge(limits.max_request_bytes, request.content_length))
    try:
        async with asyncio.timeout(limits.body_timeout):
            # The application's client_max_size turns an oversized chunked body into a 413 here.
            raw = await request.read()
    except TimeoutError:
        raise _closing(web.HTTPRequestTimeout(text="request body too slow")) from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise web.HTTPBadRequest(text="request body is not JSON") from None


async def send_batch(
    request: web.Request, opener: FileOpener, names: list[wire.ObjectName], ledger: PeerLedger
) -> web.StreamResponse:
    """Stream the batch response for ``names``."""
    encoder = BatchEncoder(opener.root, names, opener.open_cached)
    return await stream_groups(request, encoder.next_group, ledger)


async def stream_groups(
    request: web.Request, next_group: Callable[[], bytes | None], ledger: PeerLedger
) -> web.StreamResponse:
    """Stream a batch-framed response whose compressed groups ``next_group`` makes (on an encoder
    thread, one group ahead of the network) until it returns None."""
    response = web.StreamResponse(
        headers={"Content-Type": wire.BATCH_CONTENT_TYPE, "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    writer = BodyWriter(request, response, ledger)
    loop = asyncio.get_running_loop()
    encoders = _encoder_pool()
    pending = loop.run_in_executor(encoders, next_group)
    try:
        while (group := await pending) is not None:
            pending = loop.run_in_executor(encoders, next_group)
            if group:
                await writer.write(group)
    except BodyAborted:
        abort(request)
        return response
    finally:
        # The read-ahead may still be running; collect its outcome so no error is reported as lost.
        pending.add_done_callback(_discard)
    try:
        await response.write_eof()
    except ConnectionError:  # the peer left before the last chunk: nothing to report
        abort(request)
    return response


def _discard(future: asyncio.Future[bytes | None]) -> None:
    if not future.cancelled():
        future.exception()
