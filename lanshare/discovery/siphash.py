"""SipHash-2-4 with a 64-bit output (Aumasson & Bernstein, 2012), in pure Python.

libostree hashes collection-refs into its LAN bloom filter with it (``ostree_str_bloom_hash``);
the adverts are small, so speed does not matter here.
"""

from __future__ import annotations

import struct

__all__ = ["siphash24"]

_MASK = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _rounds(v0: int, v1: int, v2: int, v3: int, n: int) -> tuple[int, int, int, int]:
    for _ in range(n):
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key: bytes, message: bytes) -> int:
    """SipHash-2-4 of ``message`` under the 16-byte ``key``, as the integer its 8 output bytes encode
    little-endian (the paper's and libostree's reading)."""
    if len(key) != 16:
        raise ValueError(f"SipHash needs a 16-byte key, not {len(key)} bytes")
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    whole = len(message) - len(message) % 8
    for (m,) in struct.iter_unpack("<Q", message[:whole]):
        v3 ^= m
        v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 2)
        v0 ^= m
    # The last block: the remaining bytes, zero-padded, with the message length in the top byte.
    last = int.from_bytes(message[whole:], "little") | ((len(message) & 0xFF) << 56)
    v3 ^= last
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 2)
    v0 ^= last
    v2 ^= 0xFF
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 4)
    return v0 ^ v1 ^ v2 ^ v3
