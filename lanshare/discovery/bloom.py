"""libostree's bloom filter of collection-refs (OstreeBloom with hash id 1), as in ``rb=`` adverts.

Hash ``i`` (0 ≤ i < k) of a collection-ref is SipHash-2-4 of the collection id XOR SipHash-2-4 of
the ref name, both under the 16-byte key whose bytes all equal ``i`` (``ostree_str_bloom_hash``,
``ostree_collection_ref_bloom_hash``); its bit is ``hash mod (8 × size)``, numbered LSB-first
within each byte.  A libostree client that finds none of its wanted refs in the filter skips the
advert without asking the peer anything, so a wrong bit here makes us invisible to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lanshare.discovery.siphash import siphash24

__all__ = [
    "CollectionRef",
    "bloom_contains",
    "bloom_parameters",
    "build_bloom",
    "collection_ref_hash",
    "str_bloom_hash",
]

CollectionRef = tuple[str, str]  # (collection id, ref name)

# Bits per ref aimed for: about a 2% false-positive rate at the optimal k.
BITS_PER_REF = 8
MIN_BYTES = 8


def str_bloom_hash(text: str, i: int) -> int:
    """libostree's ``ostree_str_bloom_hash``: SipHash-2-4 of the UTF-8 bytes under key ``bytes([i]) * 16``."""
    return siphash24(bytes([i]) * 16, text.encode("utf-8"))


def collection_ref_hash(ref: CollectionRef, i: int) -> int:
    """Hash ``i`` of a collection-ref (libostree's hash id 1)."""
    return str_bloom_hash(ref[0], i) ^ str_bloom_hash(ref[1], i)


def bloom_parameters(count: int, max_bytes: int) -> tuple[int, int]:
    """(size in bytes, k) for ``count`` refs, the size at most ``max_bytes``."""
    size = max(MIN_BYTES, min(max_bytes, math.ceil(count * BITS_PER_REF / 8)))
    k = max(1, min(16, round(size * 8 / max(count, 1) * math.log(2))))
    return size, k


def build_bloom(refs: Iterable[CollectionRef], size: int, k: int) -> bytes:
    """The filter bytes with every ref of ``refs`` added."""
    if size < 1 or not 1 <= k <= 255:
        raise ValueError(f"bloom filter of {size} bytes with k={k}")
    bits = bytearray(size)
    for ref in refs:
        for i in range(k):
            index = collection_ref_hash(ref, i) % (size * 8)
            bits[index // 8] |= 1 << (index % 8)
    return bytes(bits)


def bloom_contains(bloom: bytes, k: int, ref: CollectionRef) -> bool:
    """False if ``ref`` is certainly not in the filter; True if it may be (ostree_bloom_maybe_contains)."""
    for i in range(k):
        index = collection_ref_hash(ref, i) % (len(bloom) * 8)
        if not bloom[index // 8] & (1 << (index % 8)):
            return False
    return True
