"""Content objects: file headers, their checksums, and the archive ``.filez`` format.

A content object's name is SHA-256 over: the file header ``(uuuusa(ayay))`` framed as
big-endian u32 size + 4 zero bytes + the header bytes, then the file's raw data.  In an archive
repository the object is stored as ``.filez``: the same framing around the archive header
``(tuuuusa(ayay))`` (which adds the uncompressed size), then the data as raw deflate.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from lanshare import gvariant
from lanshare.errors import CorruptObject
from lanshare.gvariant import GVariantError, swap32, swap64
from lanshare.ostree.objects import ARCHIVE_HEADER_TYPE, FILE_HEADER_TYPE, Xattrs

# libostree's default zlib level for archive repositories (OSTREE_ARCHIVE_DEFAULT_COMPRESSION_LEVEL).
COMPRESSION_LEVEL = 6
CHUNK = 256 * 1024
# Headers are small (mode, owner, symlink target, xattrs); anything bigger is hostile.
MAX_HEADER_SIZE = 1024 * 1024


@dataclass(frozen=True)
class FileHeader:
    """Ownership, mode, symlink target and xattrs of a content object; ``size`` for regular files."""

    uid: int
    gid: int
    mode: int
    symlink_target: str = ""
    xattrs: Xattrs = field(default_factory=list)
    size: int = 0
    rdev: int = 0

    @property
    def is_symlink(self) -> bool:
        """True for a symbolic link (no data, only a target)."""
        return stat.S_ISLNK(self.mode)

    def checksum_prefix(self) -> bytes:
        """The framed file header that starts the object's checksummed bytes."""
        header = gvariant.encode(
            FILE_HEADER_TYPE,
            (
                swap32(self.uid),
                swap32(self.gid),
                swap32(self.mode),
                swap32(self.rdev),
                self.symlink_target,
                self.xattrs,
            ),
        )
        return _frame(header)

    def archive_prefix(self) -> bytes:
        """The framed archive header that starts a ``.filez`` object."""
        header = gvariant.encode(
            ARCHIVE_HEADER_TYPE,
            (
                swap64(self.size),
                swap32(self.uid),
                swap32(self.gid),
                swap32(self.mode),
                swap32(self.rdev),
                self.symlink_target,
                self.xattrs,
            ),
        )
        return _frame(header)


def _frame(header: bytes) -> bytes:
    # _ostree_write_variant_with_size: BE u32 length, 4 bytes of padding to 8-align, the variant.
    return struct.pack(">I", len(header)) + b"\0\0\0\0" + header


def _validate(header: FileHeader, where: str) -> FileHeader:
    if stat.S_ISLNK(header.mode):
        if not header.symlink_target or header.size:
            raise CorruptObject(where, "symlink without a target, or with data")
    elif stat.S_ISREG(header.mode):
        if header.symlink_target:
            raise CorruptObject(where, "regular file with a symlink target")
    else:
        raise CorruptObject(where, f"mode {header.mode:o} is neither a regular file nor a symlink")
    return header


def parse_archive_header(prefix: bytes, where: str) -> FileHeader:
    """Parse the archive header bytes (without the 8-byte frame)."""
    try:
        size, uid, gid, mode, rdev, target, xattrs = gvariant.decode(ARCHIVE_HEADER_TYPE, prefix)
    except GVariantError as e:
        raise CorruptObject(where, f"malformed archive file header: {e}") from None
    return _validate(
        FileHeader(swap32(uid), swap32(gid), swap32(mode), target, xattrs, swap64(size), swap32(rdev)), where
    )


# Headers repeat: most files share owner, mode and xattrs and differ only in size, which is the
# fixed-width first field.  Caching by the bytes after it skips a GVariant decode and re-encode
# per object (a third of fsck's time on a typical tree).
_HEADER_CACHE: dict[bytes, tuple[FileHeader, bytes]] = {}
_HEADER_CACHE_LIMIT = 4096
# Only ordinary headers are kept: 4,096 hostile 1 MiB headers (big xattrs) would hold 4 GiB.
_HEADER_CACHE_MAX_BYTES = 1024


def parse_archive_header_cached(data: bytes, where: str) -> tuple[FileHeader, bytes]:
    """Parse archive header bytes; returns the header and its checksum prefix."""
    template, checksum_prefix, size = _header_template(data, where)
    return replace(template, size=size), checksum_prefix


def _header_template(data: bytes, where: str) -> tuple[FileHeader, bytes, int]:
    """The archive header bytes' header with size 0 (shared, from the cache), its checksum
    prefix, and the declared size."""
    tail = data[8:]
    hit = _HEADER_CACHE.get(tail) if len(data) >= 8 else None
    if hit is None:
        header = parse_archive_header(data, where)
        hit = (replace(header, size=0), header.checksum_prefix())
        if len(_HEADER_CACHE) < _HEADER_CACHE_LIMIT and len(data) <= _HEADER_CACHE_MAX_BYTES:
            _HEADER_CACHE[tail] = hit
    template, checksum_prefix = hit
    size = int.from_bytes(data[:8], "big")
    if size and template.is_symlink:
        raise CorruptObject(where, "symlink without a target, or with data")
    return template, checksum_prefix, size


def _read_header_bytes(stream: BinaryIO, where: str) -> bytes:
    frame = stream.read(8)
    if len(frame) != 8:
        raise CorruptObject(where, "truncated before the file header")
    (length,) = struct.unpack(">I", frame[:4])
    if length > MAX_HEADER_SIZE:
        raise CorruptObject(where, f"file header claims {length} bytes (limit {MAX_HEADER_SIZE})")
    data = stream.read(length)
    if len(data) != length:
        raise CorruptObject(where, "truncated inside the file header")
    return data


def read_archive_header(stream: BinaryIO, where: str) -> FileHeader:
    """Read and parse the framed archive header at the start of a ``.filez`` stream."""
    return parse_archive_header_cached(_read_header_bytes(stream, where), where)[0]


def inflate(stream: BinaryIO, header: FileHeader, where: str) -> Iterator[bytes]:
    """Yield the file's data from the raw-deflate payload, never more than the declared size."""
    if header.is_symlink:
        if stream.read(1):
            raise CorruptObject(where, "symlink object has trailing data")
        return
    remaining = header.size
    inflater = zlib.decompressobj(-15)
    while not inflater.eof:
        chunk = inflater.unconsumed_tail or stream.read(CHUNK)
        if not chunk:
            raise CorruptObject(where, "compressed data is truncated")
        try:
            # max_length bounds memory: at most one byte past what the header declared.
            out = inflater.decompress(chunk, min(CHUNK, remaining + 1))
        except zlib.error as e:
            raise CorruptObject(where, f"compressed data is corrupt: {e}") from None
        if len(out) > remaining:
            raise CorruptObject(where, f"data inflates past its declared size of {header.size} bytes")
        remaining -= len(out)
        if out:
            yield out
    if remaining:
        raise CorruptObject(where, f"data is {remaining} bytes shorter than its declared size")
    if inflater.unused_data or stream.read(1):
        raise CorruptObject(where, "trailing bytes after the compressed data")


def checksum_filez(stream: BinaryIO, where: str) -> tuple[str, FileHeader]:
    """Checksum a ``.filez`` stream the way libostree names it; raises CorruptObject if malformed."""
    header, checksum_prefix = parse_archive_header_cached(_read_header_bytes(stream, where), where)
    digest = hashlib.sha256(checksum_prefix)
    for chunk in inflate(stream, header, where):
        digest.update(chunk)
    return digest.hexdigest(), header


def checksum_filez_bytes(data: bytes, where: str) -> str:
    """:func:`checksum_filez` of a whole ``.filez`` object in memory, with the same checks and
    errors, in one inflate call: no stream, generator or header object per object (a pull of
    10⁴ small files does this per file).  Files declaring more than :data:`CHUNK` bytes go the
    streaming way, so that a small hostile object cannot inflate into a large buffer."""
    header_end = 8 + int.from_bytes(data[:4], "big")
    if len(data) < 8 or header_end > len(data) or header_end - 8 > MAX_HEADER_SIZE:
        return checksum_filez(io.BytesIO(data), where)[0]  # it says what is wrong
    template, checksum_prefix, size = _header_template(data[8:header_end], where)
    if size > CHUNK:
        return checksum_filez(io.BytesIO(data), where)[0]
    digest = hashlib.sha256(checksum_prefix)
    if template.is_symlink:
        if len(data) > header_end:
            raise CorruptObject(where, "symlink object has trailing data")
        return digest.hexdigest()
    inflater = zlib.decompressobj(-15)
    try:
        # max_length bounds memory: at most one byte past what the header declared.
        out = inflater.decompress(memoryview(data)[header_end:], size + 1)
    except zlib.error as e:
        raise CorruptObject(where, f"compressed data is corrupt: {e}") from None
    if len(out) > size:
        raise CorruptObject(where, f"data inflates past its declared size of {size} bytes")
    if not inflater.eof:
        raise CorruptObject(where, "compressed data is truncated")
    if len(out) < size:
        raise CorruptObject(where, f"data is {size - len(out)} bytes shorter than its declared size")
    if inflater.unused_data:
        raise CorruptObject(where, "trailing bytes after the compressed data")
    digest.update(out)
    return digest.hexdigest()


def compress_chunks(
    header: FileHeader, chunks: Iterator[bytes], level: int = COMPRESSION_LEVEL
) -> Iterator[bytes]:
    """Yield a ``.filez`` object's bytes for a file given as data chunks."""
    yield header.archive_prefix()
    if header.is_symlink:
        return
    deflater = zlib.compressobj(level, zlib.DEFLATED, -15)
    for chunk in chunks:
        out = deflater.compress(chunk)
        if out:
            yield out
    yield deflater.flush()


def content_checksum(header: FileHeader, data: bytes) -> str:
    """The object name of a file with this header and data."""
    return hashlib.sha256(header.checksum_prefix() + data).hexdigest()
