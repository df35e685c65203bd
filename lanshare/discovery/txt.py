"""The TXT records of lanshare's two mDNS adverts, encoded and decoded as raw DNS-SD bytes.

Both adverts carry their TXT as the raw RDATA of RFC 6763 §6: a sequence of strings, each one
length byte then ``key=value``.  Encoding to raw bytes (zeroconf's ``ServiceInfo(properties=bytes)``
sends them unchanged) keeps the exact bytes under our control, and decoding from raw bytes
(``AsyncServiceInfo.text``) lets a browser reject oversized or malformed adverts itself.

``_lanshare._tcp`` (text; at most :data:`MAX_LANSHARE_TXT` bytes in all)::

    v=1                 protocol version (lanshare.wire.VERSION)
    n=<32 hex>          node id
    c=<collection id>   the repository's collection id; absent when it has none
    h=<32 hex>          the first 32 hex digits of the holdings digest of /lanshare/v1/info
    cp=<64 hex>         newest checkpoint commit held; absent when none

The keys are short so that a collection id as long as one TXT string allows (253 characters)
still fits in 400 bytes; :func:`encode_lanshare_txt` refuses a longer one (TxtTooLarge).
A browser compares ``h`` with the digest it last fetched (:meth:`LanshareTxt.holdings_match`)
to know when to fetch ``/lanshare/v1/info`` again.

``_ostree_repo._tcp`` (binary; libostree's OstreeRepoFinderAvahi)::

    v=<0x01>            one byte: the TXT format version
    rb=<k><0x01><bloom> bloom filter of collection-refs (see lanshare.discovery.bloom), hash id 1
    st=<u64 BE>         summary timestamp, seconds since the epoch
    ri=<u16 BE>         repository index: the repo is at http://ADDR:PORT/<ri>/

:func:`decode_ostree_txt` follows libostree's parser: invalid strings and repeated keys are
skipped, keys are matched case-insensitively, and each value must have the exact size of its
GVariant type (``y`` 1 byte, ``(yyay)`` ≥ 2, ``t`` 8, ``q`` 2), ``v`` must be 1, ``k`` non-zero and
the hash id 1.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from lanshare import wire
from lanshare.errors import Error

__all__ = [
    "BLOOM_HASH_ID",
    "HOLDINGS_DIGITS",
    "MAX_LANSHARE_TXT",
    "MAX_OSTREE_BLOOM_BYTES",
    "LanshareTxt",
    "OstreeRepoTxt",
    "TxtError",
    "TxtTooLarge",
    "UnsupportedTxtVersion",
    "decode_lanshare_txt",
    "decode_ostree_txt",
    "encode_lanshare_txt",
    "encode_ostree_txt",
    "lanshare_txt_from_info",
    "parse_lanshare_txt",
    "split_txt",
]

MAX_LANSHARE_TXT = 400
# Hex digits of the holdings digest carried in the TXT: 128 bits tell a change apart.
HOLDINGS_DIGITS = 32
# libostree's only bloom hash: SipHash-2-4 of collection id XOR ref (ostree_collection_ref_bloom_hash).
BLOOM_HASH_ID = 1
# One TXT string holds at most 255 bytes: "rb=" + k + hash id leave 250 for the filter.
MAX_OSTREE_BLOOM_BYTES = 255 - len(b"rb=") - 2
OSTREE_TXT_VERSION = 1

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# As lanshare.ostree.repo.validate_collection_id (libostree accepts hyphens too).
_COLLECTION_ID = re.compile(r"[A-Za-z_-][A-Za-z0-9_-]*(?:\.[A-Za-z_-][A-Za-z0-9_-]*)+")
_MAX_COLLECTION_ID = 255
# One TXT string is at most 255 bytes, two of which are "c=".
MAX_TXT_COLLECTION_ID = 253
_VERSION_RE = re.compile(r"[0-9]{1,5}")


class TxtError(Error):
    """A TXT record that is malformed, incomplete or holds a bad value."""


class TxtTooLarge(TxtError):
    """A TXT record longer than its advert allows."""


class UnsupportedTxtVersion(TxtError):
    """A well-formed TXT record of a protocol version this lanshare does not speak."""

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported lanshare protocol version {version} (this node speaks {wire.VERSION})")
        self.version = version


def split_txt(raw: bytes) -> Iterator[bytes]:
    """The strings of raw TXT RDATA; TxtError if a length byte runs past the end."""
    offset = 0
    while offset < len(raw):
        length = raw[offset]
        end = offset + 1 + length
        if end > len(raw):
            left = len(raw) - offset - 1
            raise TxtError(f"TXT string at byte {offset} claims {length} bytes, only {left} left")
        yield raw[offset + 1 : end]
        offset = end


def _join_txt(strings: list[bytes]) -> bytes:
    out = bytearray()
    for item in strings:
        if len(item) > 255:
            raise TxtTooLarge(f"TXT string of {len(item)} bytes (at most 255)")
        out.append(len(item))
        out += item
    return bytes(out)


# --- _lanshare._tcp ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LanshareTxt:
    """The contents of a ``_lanshare._tcp`` TXT record."""

    node_id: str
    holdings: str  # the first HOLDINGS_DIGITS hex digits of the holdings digest
    collection_id: str | None = None
    newest_checkpoint: str | None = None
    version: int = wire.VERSION

    def holdings_match(self, digest: str) -> bool:
        """True if ``digest`` (a full holdings digest from /lanshare/v1/info) is the advertised one."""
        return digest[:HOLDINGS_DIGITS] == self.holdings

    def __post_init__(self) -> None:
        _check_lanshare_fields(self)


def _check_lanshare_fields(txt: LanshareTxt) -> None:
    if not _HEX32.fullmatch(txt.node_id):
        raise TxtError(f"node id {txt.node_id[:40]!r} is not 32 lower-case hex digits")
    if not _HEX32.fullmatch(txt.holdings):
        raise TxtError(f"holdings digest {txt.holdings[:40]!r} is not {HOLDINGS_DIGITS} lower-case hex")
    if txt.collection_id is not None and (
        len(txt.collection_id) > _MAX_COLLECTION_ID or not _COLLECTION_ID.fullmatch(txt.collection_id)
    ):
        raise TxtError(f"collection id {txt.collection_id[:60]!r} is not a valid collection ID")
    if txt.newest_checkpoint is not None and not _HEX64.fullmatch(txt.newest_checkpoint):
        raise TxtError(f"checkpoint {txt.newest_checkpoint[:70]!r} is not a commit checksum")
    if not 0 <= txt.version <= 99_999:
        raise TxtError(f"protocol version {txt.version} out of range")


def lanshare_txt_from_info(info: dict[str, object]) -> LanshareTxt:
    """The TXT contents for an info document (lanshare.server.holdings.compute_info)."""
    collection_id = info.get("collection_id")
    checkpoint = info.get("newest_checkpoint")
    return LanshareTxt(
        node_id=str(info["node_id"]),
        holdings=str(info["holdings_digest"])[:HOLDINGS_DIGITS],
        collection_id=None if collection_id is None else str(collection_id),
        newest_checkpoint=None if checkpoint is None else str(checkpoint),
        version=int(str(info.get("protocol", wire.VERSION))),
    )


def encode_lanshare_txt(txt: LanshareTxt) -> bytes:
    """Raw TXT RDATA for ``_lanshare._tcp`` (at most MAX_LANSHARE_TXT bytes)."""
    if txt.collection_id is not None and len(txt.collection_id) > MAX_TXT_COLLECTION_ID:
        raise TxtTooLarge(
            f"collection id of {len(txt.collection_id)} characters does not fit in the _lanshare._tcp TXT"
            f" record (at most {MAX_TXT_COLLECTION_ID})"
        )
    fields = [f"v={txt.version}", f"n={txt.node_id}"]
    if txt.collection_id is not None:
        fields.append(f"c={txt.collection_id}")
    fields.append(f"h={txt.holdings}")
    if txt.newest_checkpoint is not None:
        fields.append(f"cp={txt.newest_checkpoint}")
    raw = _join_txt([f.encode("ascii") for f in fields])
    if len(raw) > MAX_LANSHARE_TXT:
        raise TxtTooLarge(f"_lanshare._tcp TXT of {len(raw)} bytes (at most {MAX_LANSHARE_TXT})")
    return raw


def decode_lanshare_txt(raw: bytes) -> LanshareTxt:
    """Parse raw ``_lanshare._tcp`` TXT RDATA, strictly.

    Raises TxtTooLarge over MAX_LANSHARE_TXT bytes, UnsupportedTxtVersion for another ``v``, and
    TxtError for anything else wrong: a truncated string, a string that is not printable ASCII
    ``key=value``, a missing or malformed field.  Keys are case-insensitive; of a repeated key the
    first is used (RFC 6763 §6.4); unknown keys are ignored, so later versions may add some.
    """
    if len(raw) > MAX_LANSHARE_TXT:
        raise TxtTooLarge(f"_lanshare._tcp TXT of {len(raw)} bytes (at most {MAX_LANSHARE_TXT})")
    fields: dict[str, str] = {}
    for item in split_txt(raw):
        if not item:
            continue  # an empty string is RFC 6763's "no data" placeholder
        try:
            text = item.decode("ascii")
        except UnicodeDecodeError:
            raise TxtError("TXT string is not ASCII") from None
        key, sep, value = text.partition("=")
        if not sep or not key or not text.isprintable():
            raise TxtError(f"TXT string {text[:40]!r} is not printable key=value")
        fields.setdefault(key.lower(), value)
    version_text = fields.get("v")
    if version_text is None or not _VERSION_RE.fullmatch(version_text):
        raise TxtError(f"TXT version v={version_text!r} missing or not a number")
    version = int(version_text)
    if version != wire.VERSION:
        raise UnsupportedTxtVersion(version)
    for required in ("n", "h"):
        if required not in fields:
            raise TxtError(f"TXT lacks {required}=")
    return LanshareTxt(
        node_id=fields["n"],
        holdings=fields["h"],
        collection_id=fields.get("c"),
        newest_checkpoint=fields.get("cp"),
        version=version,
    )


def parse_lanshare_txt(raw: bytes) -> LanshareTxt | None:
    """:func:`decode_lanshare_txt`, or None for any TXT it rejects."""
    try:
        return decode_lanshare_txt(raw)
    except TxtError:
        return None


# --- _ostree_repo._tcp ------------------------------------------------------------------------


@dataclass(frozen=True)
class OstreeRepoTxt:
    """The contents of an ``_ostree_repo._tcp`` TXT record (OstreeRepoFinderAvahi's format)."""

    bloom: bytes
    k: int
    summary_timestamp: int
    repo_index: int = 0
    hash_id: int = BLOOM_HASH_ID


def encode_ostree_txt(txt: OstreeRepoTxt) -> bytes:
    """Raw TXT RDATA for ``_ostree_repo._tcp``; TxtError if a value cannot be represented."""
    if not 1 <= len(txt.bloom) <= MAX_OSTREE_BLOOM_BYTES:
        raise TxtError(f"bloom filter of {len(txt.bloom)} bytes (1 to {MAX_OSTREE_BLOOM_BYTES})")
    if not 1 <= txt.k <= 255 or not 0 <= txt.hash_id <= 255:
        raise TxtError(f"bloom k={txt.k} hash id {txt.hash_id} out of range")
    if not 0 <= txt.summary_timestamp < 2**64:
        raise TxtError(f"summary timestamp {txt.summary_timestamp} out of range")
    if not 0 <= txt.repo_index < 2**16:
        raise TxtError(f"repo index {txt.repo_index} out of range")
    return _join_txt(
        [
            b"v=" + bytes([OSTREE_TXT_VERSION]),
            b"rb=" + bytes([txt.k, txt.hash_id]) + txt.bloom,
            b"st=" + struct.pack(">Q", txt.summary_timestamp),
            b"ri=" + struct.pack(">H", txt.repo_index),
        ]
    )


def _ostree_attributes(raw: bytes) -> dict[str, bytes | None]:
    """libostree's _ostree_txt_records_parse: key → value (None: the string had no '=')."""
    out: dict[str, bytes | None] = {}
    for item in split_txt(raw):
        key_len = 0
        value: bytes | None = None
        for i, byte in enumerate(item):
            if 0x20 <= byte <= 0x7E and byte != 0x3D:
                key_len += 1
            elif key_len > 0 and byte == 0x3D:
                value = item[i + 1 :]
                break
            else:
                key_len = 0
                break
        if key_len == 0:
            continue  # invalid string: skipped, as libostree does
        key = item[:key_len].decode("ascii").lower()
        out.setdefault(key, value)
    return out


def _fixed(attributes: dict[str, bytes | None], key: str, size: int) -> bytes:
    value = attributes.get(key)
    if value is None:
        raise TxtError(f"_ostree_repo._tcp TXT lacks {key}=")
    if len(value) != size:
        raise TxtError(f"_ostree_repo._tcp TXT {key}= has {len(value)} bytes, expected {size}")
    return value


def decode_ostree_txt(raw: bytes) -> OstreeRepoTxt:
    """Parse raw ``_ostree_repo._tcp`` TXT RDATA by libostree's rules; TxtError where libostree ignores it."""
    attributes = _ostree_attributes(raw)
    version = _fixed(attributes, "v", 1)[0]
    if version != OSTREE_TXT_VERSION:
        raise TxtError(f"_ostree_repo._tcp TXT version {version} (only {OSTREE_TXT_VERSION} is known)")
    bloom_value = attributes.get("rb")
    if bloom_value is None or len(bloom_value) < 2:
        raise TxtError("_ostree_repo._tcp TXT lacks a well-formed rb= (k, hash id, bloom bytes)")
    k, hash_id, bloom = bloom_value[0], bloom_value[1], bloom_value[2:]
    if k == 0 or hash_id != BLOOM_HASH_ID or not bloom:
        raise TxtError(f"_ostree_repo._tcp bloom filter with k={k}, hash id {hash_id}, {len(bloom)} bytes")
    (timestamp,) = struct.unpack(">Q", _fixed(attributes, "st", 8))
    (repo_index,) = struct.unpack(">H", _fixed(attributes, "ri", 2))
    return OstreeRepoTxt(bloom, k, summary_timestamp=timestamp, repo_index=repo_index, hash_id=hash_id)
