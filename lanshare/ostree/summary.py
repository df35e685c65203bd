"""The repository ``summary`` file: refs, their commits and repository metadata, as libostree writes it.

Format (libostree 2022.7): GVariant ``(a(s(taya{sv}))a{sv})``.  Each ref entry is
``(name, (commit_size, checksum, {ostree.commit.timestamp: <t, big-endian>, ostree.commit.version: <s>}))``
where ``commit_size`` is a plain little-endian ``t`` (the size of the ``.commit`` object) and only the
timestamps are big-endian.  The main ref list is sorted by name and holds the repository's own refs:
with a collection id set, that is every ref of that collection (``refs/heads/*`` and
``refs/mirrors/<own-id>/*``); refs mirrored from *other* collections go into
``ostree.summary.collection-map`` (``a{sa(s(taya{sv}))}``), sorted by collection id, then by name.

libostree builds both ``a{sv}`` dictionaries with a ``GVariantDict`` (a GLib hash table), so their
order on disk is GLib's hash-table iteration order, not insertion or sorted order.  To make
:func:`build_summary` byte-identical to ``ostree summary -u`` we replay that hash table
(:func:`glib_dict_order`).  Readers never depend on the order.

Not replicated: with a collection id set, ``ostree summary -u`` also writes an ``ostree-metadata``
ref pointing at a commit that carries the summary metadata (for libostree's P2P finders, which in
2022.7 read the summary instead).  lanshare does not create it; if the repo already has that ref it is
listed like any other ref.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from lanshare import gvariant
from lanshare.errors import CorruptObject
from lanshare.gvariant import GVariantError, Variant, swap64

SUMMARY_SIGNATURE = "(a(s(taya{sv}))a{sv})"
REF_MAP_SIGNATURE = "a(s(taya{sv}))"
COLLECTION_MAP_SIGNATURE = "a{sa(s(taya{sv}))}"

KEY_TIMESTAMP = "ostree.commit.timestamp"
KEY_VERSION = "ostree.commit.version"
KEY_MODE = "ostree.summary.mode"
KEY_LAST_MODIFIED = "ostree.summary.last-modified"
KEY_TOMBSTONE_COMMITS = "ostree.summary.tombstone-commits"
KEY_INDEXED_DELTAS = "ostree.summary.indexed-deltas"
KEY_COLLECTION_ID = "ostree.summary.collection-id"
KEY_COLLECTION_MAP = "ostree.summary.collection-map"
KEY_STATIC_DELTAS = "ostree.static-deltas"

# The keys lanshare interprets; every other key is kept verbatim in ``extra_metadata``.
_KNOWN_KEYS = frozenset(
    {
        KEY_MODE,
        KEY_LAST_MODIFIED,
        KEY_TOMBSTONE_COMMITS,
        KEY_INDEXED_DELTAS,
        KEY_COLLECTION_ID,
        KEY_COLLECTION_MAP,
        KEY_STATIC_DELTAS,
    }
)

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class SummaryRef:
    """One ref entry: the ref's name and what the summary says about its head commit."""

    name: str
    checksum: str
    commit_size: int
    timestamp: int | None = None
    version: str | None = None
    extra: Mapping[str, Variant] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    """A parsed summary file."""

    refs: list[SummaryRef]
    collection_map: dict[str, list[SummaryRef]]
    mode: str | None = None
    last_modified: int | None = None
    tombstone_commits: bool | None = None
    indexed_deltas: bool | None = None
    collection_id: str | None = None
    static_deltas: dict[str, bytes] = field(default_factory=dict)
    extra_metadata: dict[str, Variant] = field(default_factory=dict)

    def ref(self, name: str, collection_id: str | None = None) -> SummaryRef | None:
        """Look up a ref in the main list (or in the collection map for another collection id)."""
        if collection_id is None or collection_id == self.collection_id:
            entries = self.refs
        else:
            entries = self.collection_map.get(collection_id, [])
        return next((r for r in entries if r.name == name), None)


# --- GLib GHashTable iteration order --------------------------------------------------------------

# GLib's prime_mod table (ghash.c), indexed by the table's shift.
_PRIME_MOD = (
    1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071, 262139,
    524287, 1048573, 2097143, 4194301, 8388593, 16777213, 33554393, 67108859, 134217689, 268435399,
    536870909, 1073741789, 2147483647,
)  # fmt: skip
_MIN_SHIFT = 3


def _g_str_hash(key: str) -> int:
    """GLib's g_str_hash (djb2 over *signed* chars, 32-bit wrap-around)."""
    h = 5381
    for byte in key.encode("utf-8"):
        h = (h * 33 + (byte - 256 if byte >= 128 else byte)) & 0xFFFFFFFF
    return h


class _GHashTable:
    """A replay of GLib 2.74's open-addressing hash table, just enough to know its iteration order."""

    def __init__(self) -> None:
        self._set_shift(_MIN_SHIFT)
        self.hashes: list[int] = [0] * self.size
        self.keys: list[str | None] = [None] * self.size
        self.nnodes = 0

    def _set_shift(self, shift: int) -> None:
        self.size = 1 << shift
        self.mod = _PRIME_MOD[shift]
        self.mask = self.size - 1

    def _index(self, hash_value: int) -> int:
        return ((hash_value * 11) & 0xFFFFFFFF) % self.mod

    def insert(self, key: str) -> None:
        hash_value = _g_str_hash(key)
        if hash_value < 2:  # 0 and 1 mark unused and tombstone slots
            hash_value = 2
        index = self._index(hash_value)
        step = 0
        while self.hashes[index] != 0:
            if self.hashes[index] == hash_value and self.keys[index] == key:
                return  # replacing a value keeps the slot
            step += 1
            index = (index + step) & self.mask
        self.hashes[index] = hash_value
        self.keys[index] = key
        self.nnodes += 1
        # g_hash_table_maybe_resize: no removals here, so occupied == nnodes
        if self.size <= self.nnodes + self.nnodes // 16:
            self._grow()

    def _grow(self) -> None:
        old_size = self.size
        wanted = int(self.nnodes * 1.333)
        self._set_shift(max(wanted.bit_length(), _MIN_SHIFT))
        self.hashes += [0] * (self.size - old_size)
        self.keys += [None] * (self.size - old_size)
        relocated: set[int] = set()
        # GLib relocates in place, evicting occupants as it goes (resize_map in ghash.c)
        for i in range(old_size):
            node_hash = self.hashes[i]
            if node_hash < 2 or i in relocated:
                continue
            self.hashes[i] = 0
            key, self.keys[i] = self.keys[i], None
            while True:
                index = self._index(node_hash)
                step = 0
                while index in relocated:
                    step += 1
                    index = (index + step) & self.mask
                relocated.add(index)
                replaced = self.hashes[index]
                self.hashes[index] = node_hash
                if replaced < 2:
                    self.keys[index] = key
                    break
                node_hash = replaced
                key, self.keys[index] = self.keys[index], key

    def order(self) -> list[str]:
        return [k for k, h in zip(self.keys, self.hashes, strict=True) if h >= 2 and k is not None]


def glib_dict_order(keys: Iterable[str]) -> list[str]:
    """The order g_variant_dict_end() emits keys inserted in this order (duplicates keep their slot)."""
    table = _GHashTable()
    for key in keys:
        table.insert(key)
    return table.order()


def _glib_dict(items: Sequence[tuple[str, Variant]]) -> dict[str, Variant]:
    """Build an a{sv} dict laid out as a GVariantDict with these insertions would be (last value wins)."""
    values = dict(items)
    return {k: values[k] for k in glib_dict_order(k for k, _ in items)}


# --- building ---------------------------------------------------------------------------------------


def _checksum_bytes(ref: SummaryRef) -> bytes:
    checksum = ref.checksum
    if len(checksum) != 64 or not _HEX.issuperset(checksum):
        raise ValueError(f"ref {ref.name!r}: checksum {checksum!r} is not 64 lowercase hex digits")
    return bytes.fromhex(checksum)


def _ref_entry(ref: SummaryRef) -> tuple[str, tuple[int, bytes, dict[str, Variant]]]:
    if not ref.name:
        raise ValueError("a summary ref needs a name")
    items: list[tuple[str, Variant]] = []
    # libostree's summary_add_ref_entry inserts the timestamp first, then the version
    if ref.timestamp is not None:
        items.append((KEY_TIMESTAMP, Variant("t", swap64(ref.timestamp))))
    if ref.version is not None:
        items.append((KEY_VERSION, Variant("s", ref.version)))
    items.extend(ref.extra.items())
    return (ref.name, (ref.commit_size, _checksum_bytes(ref), _glib_dict(items)))


def _ref_list(refs: Iterable[SummaryRef]) -> list[tuple[str, tuple[int, bytes, dict[str, Variant]]]]:
    ordered = sorted(refs, key=lambda r: r.name.encode("utf-8"))  # strcmp order
    for a, b in pairwise(ordered):
        if a.name == b.name:
            raise ValueError(f"ref {a.name!r} is listed twice")
    return [_ref_entry(r) for r in ordered]


def build_summary(
    refs: Iterable[SummaryRef],
    *,
    mode: str = "archive-z2",
    last_modified: int | None = None,
    tombstone_commits: bool = False,
    collection_id: str | None = None,
    collection_map: Mapping[str, Iterable[SummaryRef]] | None = None,
    static_deltas: Mapping[str, bytes] | None = None,
    extra_metadata: Mapping[str, Variant] | None = None,
) -> bytes:
    """Serialize a summary byte for byte as ``ostree summary -u`` (libostree 2022.7) would."""
    # refs: the main list (with a collection id, every ref of that collection); collection_map: refs
    # of *other* collections only; static_deltas: delta name (FROM-TO or TO) -> SHA-256 of its
    # superblock; extra_metadata: what ``ostree summary -m`` adds; last_modified defaults to now.
    other_collections = dict(collection_map or {})
    if collection_id is not None and collection_id in other_collections:
        raise ValueError(f"refs of the repo's own collection {collection_id!r} belong in the main list")
    if last_modified is None:
        last_modified = int(time.time())
    # Insertion order of ostree_repo_regenerate_summary(); GLib then decides the on-disk order.
    items: list[tuple[str, Variant]] = list((extra_metadata or {}).items())
    if static_deltas:
        deltas = _glib_dict([(name, Variant("ay", bytes(csum))) for name, csum in static_deltas.items()])
        items.append((KEY_STATIC_DELTAS, Variant("a{sv}", deltas)))
    items.append((KEY_LAST_MODIFIED, Variant("t", swap64(last_modified))))
    items.append((KEY_MODE, Variant("s", mode)))
    items.append((KEY_TOMBSTONE_COMMITS, Variant("b", tombstone_commits)))
    items.append((KEY_INDEXED_DELTAS, Variant("b", True)))
    if collection_id is not None:
        items.append((KEY_COLLECTION_ID, Variant("s", collection_id)))
    collection_entries = {cid: _ref_list(other_collections[cid]) for cid in sorted(other_collections)}
    # libostree only adds the map when it lists at least one ref
    if any(collection_entries.values()):
        nonempty = {cid: entries for cid, entries in collection_entries.items() if entries}
        items.append((KEY_COLLECTION_MAP, Variant(COLLECTION_MAP_SIGNATURE, nonempty)))
    return gvariant.encode(SUMMARY_SIGNATURE, (_ref_list(refs), _glib_dict(items)))


# --- parsing ----------------------------------------------------------------------------------------


def _corrupt(reason: str) -> CorruptObject:
    return CorruptObject("summary", reason)


def _typed(metadata: Mapping[str, Any], key: str, signature: str, where: str) -> Any:
    value = metadata.get(key)
    if value is None:
        return None
    if not isinstance(value, Variant) or value.signature != signature:
        got = value.signature if isinstance(value, Variant) else type(value).__name__
        raise _corrupt(f"{where}{key} has type {got}, expected {signature}")
    return value.value


def _parse_ref(entry: Any, where: str) -> SummaryRef:
    name, (commit_size, checksum, metadata) = entry
    if not name:
        raise _corrupt(f"{where}a ref has an empty name")
    if len(checksum) != 32:
        raise _corrupt(f"{where}ref {name!r} has a {len(checksum)}-byte checksum, expected 32")
    label = f"{where}ref {name!r}: "
    timestamp = _typed(metadata, KEY_TIMESTAMP, "t", label)
    version = _typed(metadata, KEY_VERSION, "s", label)
    extra = {k: v for k, v in metadata.items() if k not in (KEY_TIMESTAMP, KEY_VERSION)}
    return SummaryRef(
        name=name,
        checksum=checksum.hex(),
        commit_size=commit_size,
        timestamp=None if timestamp is None else swap64(timestamp),
        version=version,
        extra=extra,
    )


def _parse_refs(entries: list[Any], where: str) -> list[SummaryRef]:
    refs = [_parse_ref(e, where) for e in entries]
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise _corrupt(f"{where}a ref is listed twice")
    return refs


def parse_summary(data: bytes) -> Summary:
    """Parse a summary file; any malformation raises CorruptObject("summary", reason)."""
    if not data:
        # GVariant would read zero bytes as an empty summary; a zero-length file is a failed write
        raise _corrupt("the file is empty")
    try:
        ref_entries, metadata = gvariant.decode(SUMMARY_SIGNATURE, data)
    except GVariantError as e:
        raise _corrupt(f"not a valid summary ({e})") from None
    refs = _parse_refs(ref_entries, "")
    collection_map: dict[str, list[SummaryRef]] = {}
    raw_map = _typed(metadata, KEY_COLLECTION_MAP, COLLECTION_MAP_SIGNATURE, "")
    for cid, entries in (raw_map or {}).items():
        collection_map[cid] = _parse_refs(entries, f"collection {cid!r}: ")
    raw_deltas = _typed(metadata, KEY_STATIC_DELTAS, "a{sv}", "") or {}
    static_deltas: dict[str, bytes] = {}
    for name, value in raw_deltas.items():
        if not isinstance(value, Variant) or value.signature != "ay" or len(value.value) != 32:
            raise _corrupt(f"static delta {name!r} does not carry a 32-byte checksum")
        static_deltas[name] = value.value
    last_modified = _typed(metadata, KEY_LAST_MODIFIED, "t", "")
    return Summary(
        refs=refs,
        collection_map=collection_map,
        mode=_typed(metadata, KEY_MODE, "s", ""),
        last_modified=None if last_modified is None else swap64(last_modified),
        tombstone_commits=_typed(metadata, KEY_TOMBSTONE_COMMITS, "b", ""),
        indexed_deltas=_typed(metadata, KEY_INDEXED_DELTAS, "b", ""),
        collection_id=_typed(metadata, KEY_COLLECTION_ID, "s", ""),
        static_deltas=static_deltas,
        extra_metadata={k: v for k, v in metadata.items() if k not in _KNOWN_KEYS},
    )
