"""``POST /lanshare/v1/objects``: many objects in one zstd stream, framed by :mod:`lanshare.wire`.

Objects are read and compressed in a worker thread a group at a time, while the event loop sends
the previous group, so a large batch neither blocks other requests nor waits on the disk and the
network in turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import zstandard
from aiohttp import web

from lanshare import wire
from lanshare.server.archive import open_beneath
from lanshare.server.limits import BodyAborted, BodyWriter, LanLimits, PeerLedger, abort

log = logging.getLogger(__name__)

# Uncompressed bytes read per worker-thread step: enough to amortise the thread hop, small
# enough that the first bytes leave quickly and memory stays bounded.
GROUP_BYTES = 1024 * 1024
# Larger objects are answered TOO_LARGE, and the peer fetches them from the archive layout (sent
# with sendfile, never held in memory).  Batching is for many small objects; a batch of several
# MB objects held each one three times (read, framed, compressed) in every encoder, taking a
# daemon under 50 peers from 90 to 350 MB (bench/bench_load.py --mode batch).
BATCH_OBJECT_BYTES = 1024 * 1024


def read_object(root: Path, name: wire.ObjectName) -> tuple[bytes | None, int]:
    """An object file's bytes and its wire status (PRESENT, ABSENT or TOO_LARGE)."""
    parts = ("objects", name.checksum[:2], f"{name.checksum[2:]}.{name.kind.value}")
    try:
        fd = open_beneath(root, parts)
    except OSError:
        return None, wire.ABSENT
    limit = min(BATCH_OBJECT_BYTES, wire.MAX_OBJECT_BYTES)
    with open(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if size > limit:
            return None, wire.TOO_LARGE
        try:
            # Sized by fstat: read(limit + 1) allocated the whole limit for every small object.
            data = f.read(size + 1)
        except OSError as e:
            log.warning("cannot read %s: %s", "/".join(parts), e)
            return None, wire.ABSENT
    # A file that changed size since fstat is not sent half-read: the archive path serves it.
    return (data, wire.PRESENT) if len(data) == size else (None, wire.TOO_LARGE)


class BatchEncoder:
    """The compressed batch stream for a list of names, produced a group at a time (not thread-safe)."""

    def __init__(self, root: Path, names: list[wire.ObjectName]) -> None:
        self._root = root
        self._names = names
        self._next = 0
        self._compressor = wire.compressor().compressobj()
        self._started = False
        self._finished = False

    def next_group(self) -> bytes | None:
        """Compressed bytes for the next group of records (the end marker last); None when done."""
        if self._finished:
            return None
        out: list[bytes] = []
        if not self._started:
            out.append(self._compressor.compress(wire.MAGIC))
            self._started = True
        raw = 0
        while self._next < len(self._names) and raw < GROUP_BYTES:
            name = self._names[self._next]
            self._next += 1
            data, status = read_object(self._root, name)
            record = wire.encode_record(name, data, status)
            raw += len(record)
            out.append(self._compressor.compress(record))
        if self._next == len(self._names):
            out.append(self._compressor.compress(bytes([wire.END])))
            out.append(self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            self._finished = True
        else:
            # Flush the block so the peer can start verifying these objects while we read more.
            out.append(self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        return b"".join(out)


def _closing(error: web.HTTPException) -> web.HTTPException:
    # The rest of the body was never read: the connection cannot carry another request.
    error.force_close()
    return error


async def read_batch_request(request: web.Request, limits: LanLimits) -> list[wire.ObjectName]:
    """Read and validate the JSON body; raises the HTTP error a bad request deserves."""
    if request.content_length is not None and request.content_length > limits.max_request_bytes:
        raise _closing(web.HTTPRequestEntityTooLarge(limits.max_request_bytes, request.content_length))
    try:
        async with asyncio.timeout(limits.body_timeout):
            # The application's client_max_size turns an oversized chunked body into a 413 here.
            raw = await request.read()
    except TimeoutError:
        raise _closing(web.HTTPRequestTimeout(text="request body too slow")) from None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise web.HTTPBadRequest(text="request body is not JSON") from None
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


async def send_batch(
    request: web.Request, root: Path, names: list[wire.ObjectName], ledger: PeerLedger
) -> web.StreamResponse:
    """Stream the batch response for ``names``."""
    response = web.StreamResponse(
        headers={"Content-Type": wire.BATCH_CONTENT_TYPE, "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    writer = BodyWriter(request, response, ledger)
    encoder = BatchEncoder(root, names)
    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(None, encoder.next_group)
    try:
        while (group := await pending) is not None:
            pending = loop.run_in_executor(None, encoder.next_group)
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
