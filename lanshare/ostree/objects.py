"""OSTree object kinds and their GVariant formats, as libostree writes them.

Metadata objects (commit, dirtree, dirmeta, commitmeta) are named by the SHA-256 of their
serialized bytes.  Content objects are named by the SHA-256 of a size-prefixed file header
followed by the file's raw data; see :mod:`lanshare.ostree.content`.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from lanshare import gvariant
from lanshare.errors import CorruptObject
from lanshare.gvariant import GVariantError, Variant, swap32, swap64

COMMIT_TYPE = "(a{sv}aya(say)sstayay)"
DIRTREE_TYPE = "(a(say)a(sayay))"
DIRMETA_TYPE = "(uuua(ayay))"
METADATA_TYPE = "a{sv}"
FILE_HEADER_TYPE = "(uuuusa(ayay))"
ARCHIVE_HEADER_TYPE = "(tuuuusa(ayay))"

# libostree refuses metadata objects above OSTREE_MAX_METADATA_SIZE; so do we, before parsing.
MAX_METADATA_SIZE = 128 * 1024 * 1024

_CHECKSUM_RE = re.compile(r"^[0-9a-f]{64}$")

Xattrs = list[tuple[bytes, bytes]]


class ObjectType(enum.Enum):
    """An object kind, valued by its file extension in an archive repository."""

    FILE = "filez"
    DIR_TREE = "dirtree"
    DIR_META = "dirmeta"
    COMMIT = "commit"
    COMMIT_META = "commitmeta"
    TOMBSTONE_COMMIT = "commit-tombstone"

    # Members are singletons, so identity hashing is correct; it runs in C where Enum's default
    # (hash of the name, in Python) dominated prune's mark phase over (checksum, type) keys.
    __hash__ = object.__hash__

    def __lt__(self, other: object) -> bool:
        # Ordered by extension, so (checksum, type) keys sort deterministically.
        if not isinstance(other, ObjectType):
            return NotImplemented
        return self.value < other.value

    @property
    def is_meta(self) -> bool:
        """True for objects named by the checksum of their own bytes."""
        return self is not ObjectType.FILE

    @classmethod
    def from_extension(cls, ext: str) -> ObjectType:
        """Map an archive file extension (``filez``, ``commit``…) to its type."""
        try:
            return _BY_EXTENSION[ext]
        except KeyError:
            raise ValueError(f"unknown object extension {ext!r}") from None


# A dict lookup: Enum's own value lookup is slow for the 10⁵ objects a repository walk meets.
_BY_EXTENSION = {kind.value: kind for kind in ObjectType}


def is_checksum(text: str) -> bool:
    """True if ``text`` is a full lowercase hex SHA-256."""
    return bool(_CHECKSUM_RE.fullmatch(text))


def checksum_to_bytes(checksum: str) -> bytes:
    """Hex checksum to its 32 raw bytes (how OSTree stores references between objects)."""
    if not is_checksum(checksum):
        raise ValueError(f"not a checksum: {checksum!r}")
    return bytes.fromhex(checksum)


def checksum_from_bytes(raw: bytes, where: str) -> str:
    """32 raw bytes to hex, with a clear error naming ``where`` they were found."""
    if len(raw) != 32:
        raise CorruptObject(where, f"embedded checksum has {len(raw)} bytes instead of 32")
    return raw.hex()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the name of a metadata object with these bytes."""
    return hashlib.sha256(data).hexdigest()


def _decode(signature: str, data: bytes, where: str) -> Any:
    if len(data) > MAX_METADATA_SIZE:
        raise CorruptObject(where, f"{len(data)} bytes is larger than the metadata limit")
    try:
        return gvariant.decode(signature, data)
    except GVariantError as e:
        raise CorruptObject(where, f"malformed {signature}: {e}") from None


def validate_filename(name: str, where: str) -> str:
    """Reject dirtree entry names that could escape a checkout (as libostree does)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise CorruptObject(where, f"invalid file name {name!r} in directory listing")
    return name


@dataclass(frozen=True)
class Commit:
    """A commit object: metadata, parent, subject/body, timestamp and root tree."""

    root_tree: str
    root_meta: str
    timestamp: int
    parent: str | None = None
    subject: str = ""
    body: str = ""
    metadata: dict[str, Variant] = field(default_factory=dict)
    related: list[tuple[str, bytes]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """Serialize in GVariant normal form; the SHA-256 of this is the commit checksum."""
        return gvariant.encode(
            COMMIT_TYPE,
            (
                self.metadata,
                checksum_to_bytes(self.parent) if self.parent else b"",
                self.related,
                self.subject,
                self.body,
                swap64(self.timestamp),
                checksum_to_bytes(self.root_tree),
                checksum_to_bytes(self.root_meta),
            ),
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "commit") -> Commit:
        """Parse a commit object, checking its embedded checksums have the right size."""
        metadata, parent, related, subject, body, timestamp, tree, meta = _decode(COMMIT_TYPE, data, where)
        return cls(
            root_tree=checksum_from_bytes(tree, where),
            root_meta=checksum_from_bytes(meta, where),
            timestamp=swap64(timestamp),
            parent=checksum_from_bytes(parent, where) if parent else None,
            subject=subject,
            body=body,
            metadata=metadata,
            related=related,
        )

    def meta_value(self, key: str) -> Any:
        """The unwrapped value of a metadata key, or None when absent."""
        value = self.metadata.get(key)
        return value.value if isinstance(value, Variant) else None

    @property
    def version(self) -> str | None:
        """The ``version`` metadata string, when the publisher set one."""
        value = self.meta_value("version")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class DirTree:
    """A directory listing: files (name, content checksum) and subdirectories."""

    files: list[tuple[str, str]] = field(default_factory=list)
    dirs: list[tuple[str, str, str]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """Serialize with entries sorted by name, as libostree requires."""
        files = sorted(self.files)
        dirs = sorted(self.dirs)
        return gvariant.encode(
            DIRTREE_TYPE,
            (
                [(name, checksum_to_bytes(c)) for name, c in files],
                [(name, checksum_to_bytes(t), checksum_to_bytes(m)) for name, t, m in dirs],
            ),
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "dirtree") -> DirTree:
        """Parse a dirtree, rejecting names that are unsafe, duplicated or out of order.

        Read with the dirtree's own framing reader, which accepts exactly what the generic
        GVariant decoder accepts (tests hold the two to that) at a fraction of its cost: a pull
        parses every dirtree it stores, ~250 µs each through the generic decoder."""
        raw_files, raw_dirs = _read_dirtree(data, where, with_names=True)
        files = [(validate_filename(n, where), c) for n, c in raw_files]
        dirs = [(validate_filename(n, where), t, m) for n, (t, m) in raw_dirs]
        for names in ([n for n, _ in files], [n for n, _, _ in dirs]):
            encoded = [n.encode() for n in names]
            if any(a >= b for a, b in itertools.pairwise(encoded)):
                raise CorruptObject(where, "directory entries are not sorted and unique")
        if {n for n, _ in files} & {n for n, _, _ in dirs}:
            raise CorruptObject(where, "a name is both a file and a directory")
        return cls(files, dirs)


def _offset_width(size: int) -> int:
    """GVariant framing-offset width for a container of ``size`` bytes."""
    return 0 if size == 0 else 1 if size <= 0xFF else 2 if size <= 0xFFFF else 4 if size <= 0xFFFFFFFF else 8


def _element_spans(data: bytes, start: int, end: int, where: str) -> list[tuple[int, int]]:
    """(start, end) of each element of an array of variable-size, 1-aligned elements in data[start:end]."""
    size = end - start
    if size == 0:
        return []
    width = _offset_width(size)
    table = start + int.from_bytes(data[end - width : end], "little")
    if not start <= table <= end or (end - table) % width:
        raise CorruptObject(where, "malformed dirtree: array framing offset out of bounds")
    spans = []
    pos = start
    for at in range(table, end, width):
        element_end = start + int.from_bytes(data[at : at + width], "little")
        if not pos <= element_end <= table:
            raise CorruptObject(where, "malformed dirtree: element framing offset out of bounds")
        spans.append((pos, element_end))
        pos = element_end
    return spans


def _checksum_at(data: bytes, start: int, end: int, where: str) -> str:
    if end - start != 32:
        raise CorruptObject(where, f"embedded checksum has {max(end - start, 0)} bytes instead of 32")
    return data[start:end].hex()


def dirtree_checksums(data: bytes, where: str = "dirtree") -> tuple[list[str], list[tuple[str, str]]]:
    """The checksums a dirtree names: its files, and (dirtree, dirmeta) of its subdirectories.

    Skips the names, for walks over objects that were verified when they entered the repository
    (prune's mark phase parses every tree it keeps).  Bounds are still checked: malformed bytes
    raise :class:`CorruptObject`, never read outside the object.
    """
    files: list[str]
    dirs: list[tuple[str, str]]
    files, dirs = _read_dirtree(data, where, with_names=False)
    return files, dirs


def _read_dirtree(data: bytes, where: str, *, with_names: bool) -> tuple[list[Any], list[Any]]:
    """A reader of the ``(a(say)a(sayay))`` framing: each file's checksum and each subdirectory's
    (dirtree, dirmeta), each paired with its name (``with_names``) as ``(name, …)``.

    Every element of this type is 1-aligned, so the framing is all there is to check; it is
    checked as the GVariant decoder checks it, and names as it checks strings."""
    size = len(data)
    if size > MAX_METADATA_SIZE:
        raise CorruptObject(where, f"{size} bytes is larger than the metadata limit")
    width = _offset_width(size)
    files_end = int.from_bytes(data[size - width : size], "little")
    if files_end > size - width:
        raise CorruptObject(where, "malformed dirtree: tuple framing offset out of bounds")
    files: list[Any] = []
    for start, end in _element_spans(data, 0, files_end, where):  # (s ay): one offset, the name's end
        w = _offset_width(end - start)
        if end - start < w:
            raise CorruptObject(where, "malformed dirtree: file entry too short")
        name_end = start + int.from_bytes(data[end - w : end], "little")
        if not start <= name_end <= end - w:
            raise CorruptObject(where, "malformed dirtree: file entry framing offset out of bounds")
        checksum = _checksum_at(data, name_end, end - w, where)
        files.append((_name_at(data, start, name_end, where), checksum) if with_names else checksum)
    dirs: list[Any] = []
    for start, end in _element_spans(data, files_end, size - width, where):  # (s ay ay): two offsets
        w = _offset_width(end - start)
        if end - start < 2 * w:
            raise CorruptObject(where, "malformed dirtree: directory entry too short")
        name_end = start + int.from_bytes(data[end - w : end], "little")
        tree_end = start + int.from_bytes(data[end - 2 * w : end - w], "little")
        if not start <= name_end <= tree_end <= end - 2 * w:
            raise CorruptObject(where, "malformed dirtree: directory entry framing offset out of bounds")
        pair = (
            _checksum_at(data, name_end, tree_end, where),
            _checksum_at(data, tree_end, end - 2 * w, where),
        )
        dirs.append((_name_at(data, start, name_end, where), pair) if with_names else pair)
    return files, dirs


def _name_at(data: bytes, start: int, end: int, where: str) -> str:
    """A GVariant string: NUL-terminated, no other NUL, UTF-8."""
    if end == start or data[end - 1] != 0:
        raise CorruptObject(where, "malformed dirtree: a name is not NUL-terminated")
    raw = data[start : end - 1]
    if b"\0" in raw:
        raise CorruptObject(where, "malformed dirtree: a name contains an embedded NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptObject(where, "malformed dirtree: a name is not valid UTF-8") from None


@dataclass(frozen=True)
class DirMeta:
    """Directory ownership, mode and extended attributes."""

    uid: int
    gid: int
    mode: int
    xattrs: Xattrs = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """Serialize with uid, gid and mode big-endian, as libostree does."""
        return gvariant.encode(
            DIRMETA_TYPE, (swap32(self.uid), swap32(self.gid), swap32(self.mode), self.xattrs)
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "dirmeta") -> DirMeta:
        """Parse a dirmeta and check its mode is a directory's."""
        uid, gid, mode, xattrs = _decode(DIRMETA_TYPE, data, where)
        meta = cls(swap32(uid), swap32(gid), swap32(mode), xattrs)
        if not stat.S_ISDIR(meta.mode):
            raise CorruptObject(where, f"dirmeta mode {meta.mode:o} is not a directory")
        return meta


def parse_metadata(data: bytes, where: str) -> dict[str, Variant]:
    """Parse an ``a{sv}`` object such as ``.commitmeta``."""
    result: dict[str, Variant] = _decode(METADATA_TYPE, data, where)
    return result


def encode_metadata(metadata: dict[str, Variant]) -> bytes:
    """Serialize an ``a{sv}`` dictionary (e.g. a ``.commitmeta`` object)."""
    return gvariant.encode(METADATA_TYPE, metadata)


def validate_metadata_object(object_type: ObjectType, data: bytes, where: str) -> None:
    """Parse a metadata object fully so a malformed one is refused before it is stored."""
    if object_type is ObjectType.COMMIT:
        Commit.from_bytes(data, where)
    elif object_type is ObjectType.DIR_TREE:
        DirTree.from_bytes(data, where)
    elif object_type is ObjectType.DIR_META:
        DirMeta.from_bytes(data, where)
    elif object_type in (ObjectType.COMMIT_META, ObjectType.TOMBSTONE_COMMIT):
        parse_metadata(data, where)
    else:
        raise ValueError(f"{object_type} is not a metadata object")
