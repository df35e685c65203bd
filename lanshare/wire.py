"""lanshare's own LAN protocol (``/lanshare/v1/``): the one place its framing is defined.

Batch object fetch: ``POST /lanshare/v1/objects`` with a JSON body
``{"objects": ["<checksum>.<ext>", ...]}`` (at most :data:`MAX_BATCH_OBJECTS` names, body at most
:data:`MAX_REQUEST_BYTES`) answers ``200`` with content type :data:`BATCH_CONTENT_TYPE`: a zstd
stream whose decompressed bytes are

    MAGIC (b"LSB" + version byte)
    record*      one per requested name, in request order
    END          one byte 0xFF

    record := kind (1 byte, see _KIND_CODES) | checksum (32 raw bytes) | status (1 byte)
              | [length (8 bytes, big-endian) | data (length bytes)]   -- only when status == PRESENT
    status := PRESENT | ABSENT (not held) | TOO_LARGE (fetch it from the archive path)

``data`` is the object file exactly as stored in the archive repository (``.filez`` stays
deflated), so the receiver verifies it with the same code as any other source.  A peer that does
not hold an object says so (status ABSENT) instead of failing the whole batch.

Bump :data:`VERSION` (and the path prefix) for any incompatible change.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, cast

import zstandard

from lanshare.errors import Error
from lanshare.ostree.objects import ObjectType, is_checksum

VERSION = 1
API_PREFIX = "/lanshare/v1"
# Where a batch request is POSTed (the trees request has TREES_PATH, further down).
OBJECTS_PATH = f"{API_PREFIX}/objects"
MAGIC = b"LSB" + bytes([VERSION])
BATCH_CONTENT_TYPE = "application/x-lanshare-batch+zstd"
MAX_BATCH_OBJECTS = 1024
MAX_REQUEST_BYTES = 128 * 1024
# Objects above this travel through the plain archive path instead, which streams and resumes.
MAX_OBJECT_BYTES = 16 * 1024 * 1024
END = 0xFF
# ABSENT: the peer does not hold it.  TOO_LARGE: above what the server batches (at most
# MAX_OBJECT_BYTES; lanshare's server sends objects over 1 MiB this way); fetch it from the plain
# archive path, which streams and supports Range.
PRESENT, ABSENT, TOO_LARGE = 0, 1, 2

_KIND_CODES: dict[ObjectType, int] = {
    ObjectType.FILE: 1,
    ObjectType.DIR_TREE: 2,
    ObjectType.DIR_META: 3,
    ObjectType.COMMIT: 4,
    ObjectType.COMMIT_META: 5,
    ObjectType.TOMBSTONE_COMMIT: 6,
}
_CODE_KINDS = {code: kind for kind, code in _KIND_CODES.items()}
_HEADER = struct.Struct(">B32sB")
_INFLATE_STEP = 256 * 1024
_LENGTH = struct.Struct(">Q")
_MAX_BUFFERED = MAX_OBJECT_BYTES + _HEADER.size + _LENGTH.size + 1


class WireError(Error):
    """A peer sent something that does not follow the protocol."""


@dataclass(frozen=True)
class ObjectName:
    """A requested object: checksum and type (``<checksum>.<ext>`` on the wire)."""

    checksum: str
    kind: ObjectType

    def __str__(self) -> str:
        return f"{self.checksum}.{self.kind.value}"

    @classmethod
    def parse(cls, text: str) -> ObjectName:
        """Parse ``<checksum>.<ext>``; raises WireError for anything else."""
        checksum, _, ext = text.partition(".")
        if not is_checksum(checksum):
            raise WireError(f"bad object name {text[:80]!r}")
        try:
            return cls(checksum, ObjectType.from_extension(ext))
        except ValueError:
            raise WireError(f"bad object type in {text[:80]!r}") from None


def parse_request(body: object) -> list[ObjectName]:
    """Validate a decoded JSON batch request body."""
    if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
        raise WireError('expected a JSON object {"objects": [...]}')
    names = body["objects"]
    if len(names) > MAX_BATCH_OBJECTS:
        raise WireError(f"{len(names)} objects requested; at most {MAX_BATCH_OBJECTS} per batch")
    if not all(isinstance(n, str) for n in names):
        raise WireError("object names must be strings")
    return [ObjectName.parse(n) for n in names]


def encode_record(name: ObjectName, data: bytes | None, status: int = PRESENT) -> bytes:
    """One record: header, and length plus data when the object is present."""
    if data is None:
        return _HEADER.pack(_KIND_CODES[name.kind], bytes.fromhex(name.checksum), status)
    header = _HEADER.pack(_KIND_CODES[name.kind], bytes.fromhex(name.checksum), PRESENT)
    return header + _LENGTH.pack(len(data)) + data


def encode_batch(records: Iterable[tuple[ObjectName, bytes | None]]) -> Iterator[bytes]:
    """Uncompressed batch stream for (name, data or None) pairs; the server compresses it."""
    yield MAGIC
    for name, data in records:
        yield encode_record(name, data, ABSENT)
    yield bytes([END])


def compressor() -> zstandard.ZstdCompressor:
    """The compressor both ends agree on (level 3: cheap on a LAN, still shrinks metadata well)."""
    return zstandard.ZstdCompressor(level=3)


class _Inflated:
    """The file-like end of the zstd stream writer: passes each piece of output on."""

    def __init__(self, take: Callable[[bytes], None]) -> None:
        self._take = take

    def write(self, data: bytes) -> int:
        self._take(data)
        return len(data)


class BatchDecoder:
    """Incremental parser of a batch response: feed compressed bytes, get records as they complete.

    Records must arrive in request order, so a peer cannot slip in an object nobody asked for;
    a stream that ends early, runs on, or declares an oversized object is an error.  Memory is
    bounded by :data:`MAX_OBJECT_BYTES` plus one network chunk.
    """

    def __init__(self, expected: list[ObjectName]) -> None:
        self._expected = list(expected)
        self._next = 0
        # A stream writer hands the inflated bytes to _inflated at most _INFLATE_STEP at a time,
        # however much one network chunk expands to, so a decompression bomb is caught (by the
        # size check there) before it exhausts memory, with one decompress call per chunk.
        self._inflater = zstandard.ZstdDecompressor().stream_writer(
            cast(IO[bytes], _Inflated(self._inflated)),  # it only ever calls write()
            write_size=_INFLATE_STEP,
            write_return_read=True,
        )
        self._buffer = bytearray()
        self._need = 1  # buffered bytes the next record needs before parsing it is worth trying
        self._records: list[tuple[ObjectName, bytes | None, int]] = []
        self._seen_magic = False
        self._done = False

    def feed(self, compressed: bytes) -> list[tuple[ObjectName, bytes | None, int]]:
        """Parse what ``compressed`` completes: (name, data or None, status) per finished record."""
        try:
            self._inflater.write(compressed)
        except zstandard.ZstdError as e:
            raise WireError(f"batch stream is not valid zstd: {e}") from None
        out, self._records = self._records, []
        return out

    def _inflated(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._need:
            while (record := self._parse_one()) is not None:
                self._records.append(record)
        if len(self._buffer) > _MAX_BUFFERED:
            raise WireError(f"batch record larger than the {MAX_OBJECT_BYTES}-byte limit")

    def _parse_one(self) -> tuple[ObjectName, bytes | None, int] | None:
        buf = self._buffer
        if not self._seen_magic:
            if len(buf) < len(MAGIC):
                return None
            if bytes(buf[: len(MAGIC)]) != MAGIC:
                raise WireError("not a lanshare v1 batch stream")
            del buf[: len(MAGIC)]
            self._seen_magic = True
        if self._done:
            if buf:
                raise WireError("trailing bytes after the end of the batch")
            return None
        if not buf:
            return None
        if buf[0] == END:
            self._check_end()
            del buf[:1]
            self._done = True
            return self._parse_one()
        if len(buf) < _HEADER.size:
            return None
        kind_code, raw, status = _HEADER.unpack_from(buf)
        kind = _CODE_KINDS.get(kind_code)
        want = self._check_record(None if kind is None else ObjectName(raw.hex(), kind), kind_code, raw)
        if status in (ABSENT, TOO_LARGE):
            self._check_status(want, status)
            del buf[: _HEADER.size]
            self._accepted(want, None)
            return want, None, status
        if status != PRESENT:
            raise WireError(f"bad record status {status} for {want}")
        if len(buf) < _HEADER.size + _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(buf, _HEADER.size)
        if length > MAX_OBJECT_BYTES:
            raise WireError(f"{want} claims {length} bytes (limit {MAX_OBJECT_BYTES})")
        start = _HEADER.size + _LENGTH.size
        if len(buf) < start + length:
            self._need = start + length  # a large object arrives in many steps: parse it once
            return None
        with memoryview(buf) as view:
            data = bytes(view[start : start + length])  # one copy, not two
        del buf[: start + length]
        self._need = 1
        self._accepted(want, data)
        return want, data, PRESENT

    # -- what a stream may carry: each requested name once, in request order ---------------

    def _check_end(self) -> None:
        if self._next < len(self._expected):
            raise WireError(
                f"batch ended after fewer records than requested (missing {self._expected[self._next]})"
            )

    def _check_record(self, got: ObjectName | None, kind_code: int, raw: bytes) -> ObjectName:
        """The name the next record must have, given its header; WireError for any other."""
        if self._next == len(self._expected):
            raise WireError("batch carries more records than requested")
        want = self._expected[self._next]
        if got != want:
            shown = got if got is not None else ObjectName(raw.hex(), want.kind)
            raise WireError(f"batch sent {shown} where {want} was expected")
        return want

    def _check_status(self, name: ObjectName, status: int) -> None:
        """ABSENT and TOO_LARGE are answers a batch may give."""

    def _accepted(self, name: ObjectName, data: bytes | None) -> None:
        self._next += 1

    def finish(self) -> None:
        """Call at the end of the response: raises unless every record and the end marker came."""
        if not self._done:
            missing = self._expected[self._next] if self._next < len(self._expected) else "the end marker"
            raise WireError(f"batch stream ended early (before {missing})")


# -- tree closures: a commit's directory metadata in one response ---------------------------------

# ``POST /lanshare/v1/trees`` with ``{"commit": "<checksum>", "base": "<checksum>" | null}`` answers
# with the same framing as a batch, carrying every dirtree and dirmeta of the commit's tree that the
# server holds, parents before children, each once; subtrees the ``base`` commit's tree shares are
# left out (the asker holds ``base`` complete).  A pull then needs one round trip for the whole
# tree instead of one per directory level.  A server that holds only part of the tree sends that
# part: the asker fetches the rest as before.
TREES_PATH = f"{API_PREFIX}/trees"
TREES_FEATURE = "trees"
# Far above any real tree (an OS of 10⁵ files has ~10⁴ directories), low enough to bound a liar.
MAX_TREE_RECORDS = 2_000_000


def parse_trees_request(body: object) -> tuple[str, str | None]:
    """The commit and the optional base of a decoded JSON trees request; WireError otherwise."""
    if not isinstance(body, dict):
        raise WireError('expected a JSON object {"commit": ..., "base": ...}')
    commit, base = body.get("commit"), body.get("base")
    if not isinstance(commit, str) or not is_checksum(commit):
        raise WireError("commit must be a commit checksum")
    if base is not None and (not isinstance(base, str) or not is_checksum(base)):
        raise WireError("base must be a commit checksum or null")
    return commit, base


Expand = Callable[[ObjectName, bytes], Iterable[ObjectName]]


class TreeDecoder(BatchDecoder):
    """Parser of a trees response: a record is accepted only if it is wanted — the root's dirtree
    and dirmeta, then whatever an accepted dirtree names (``expand`` says what, and must check the
    record against its checksum first) — so a peer can send nothing outside the tree."""

    def __init__(self, roots: Iterable[ObjectName], expand: Expand) -> None:
        super().__init__([])
        self._wanted = set(roots)
        self._expand = expand
        self._count = 0

    def _check_end(self) -> None:
        """A trees response may end anywhere: what it left out is fetched another way."""

    def _check_record(self, got: ObjectName | None, kind_code: int, raw: bytes) -> ObjectName:
        if got is None or got not in self._wanted:
            shown = got if got is not None else f"an object of unknown kind {kind_code}"
            raise WireError(f"trees response sent {shown}, which is not part of the tree asked for")
        self._count += 1
        if self._count > MAX_TREE_RECORDS:
            raise WireError(f"trees response carries more than {MAX_TREE_RECORDS} records")
        return got

    def _check_status(self, name: ObjectName, status: int) -> None:
        raise WireError(f"trees response says {name} is absent: it should leave it out")

    def _accepted(self, name: ObjectName, data: bytes | None) -> None:
        # Still wanted afterwards: a repeat (two directories sharing a dirmeta, from a server that
        # does not deduplicate) is part of the tree too, and the record limit bounds repeats.
        if data is not None and name.kind is ObjectType.DIR_TREE:
            self._wanted.update(self._expand(name, data))

    def finish(self) -> None:
        """Call at the end of the response: raises unless the end marker came."""
        if not self._done:
            raise WireError("trees stream ended early (before the end marker)")
