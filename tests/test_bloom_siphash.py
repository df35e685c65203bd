"""SipHash-2-4 against the paper's reference vectors; libostree's collection-ref bloom filter."""

from __future__ import annotations

import pytest

from lanshare.discovery.bloom import (
    bloom_contains,
    bloom_parameters,
    build_bloom,
    collection_ref_hash,
    str_bloom_hash,
)
from lanshare.discovery.siphash import siphash24
from lanshare.discovery.txt import MAX_OSTREE_BLOOM_BYTES

# The reference implementation's vectors.h (vectors_sip64): key 00 01 … 0f, message 00 01 … (n-1)
# for n = 0 … 63, each output as its 8 little-endian bytes.
REFERENCE_VECTORS = [
    "310e0edd47db6f72",
    "fd67dc93c539f874",
    "5a4fa9d909806c0d",
    "2d7efbd796666785",
    "b7877127e09427cf",
    "8da699cd64557618",
    "cee3fe586e46c9cb",
    "37d1018bf50002ab",
    "6224939a79f5f593",
    "b0e4a90bdf82009e",
    "f3b9dd94c5bb5d7a",
    "a7ad6b22462fb3f4",
    "fbe50e86bc8f1e75",
    "903d84c02756ea14",
    "eef27a8e90ca23f7",
    "e545be4961ca29a1",
    "db9bc2577fcc2a3f",
    "9447be2cf5e99a69",
    "9cd38d96f0b3c14b",
    "bd6179a71dc96dbb",
    "98eea21af25cd6be",
    "c7673b2eb0cbf2d0",
    "883ea3e395675393",
    "c8ce5ccd8c030ca8",
    "94af49f6c650adb8",
    "eab8858ade92e1bc",
    "f315bb5bb835d817",
    "adcf6b0763612e2f",
    "a5c91da7acaa4dde",
    "716595876650a2a6",
    "28ef495c53a387ad",
    "42c341d8fa92d832",
    "ce7cf2722f512771",
    "e37859f94623f3a7",
    "381205bb1ab0e012",
    "ae97a10fd434e015",
    "b4a31508beff4d31",
    "81396229f0907902",
    "4d0cf49ee5d4dcca",
    "5c73336a76d8bf9a",
    "d0a704536ba93e0e",
    "925958fcd6420cad",
    "a915c29bc8067318",
    "952b79f3bc0aa6d4",
    "f21df2e41d4535f9",
    "87577519048f53a9",
    "10a56cf5dfcd9adb",
    "eb75095ccd986cd0",
    "51a9cb9ecba312e6",
    "96afadfc2ce666c7",
    "72fe52975a4364ee",
    "5a1645b276d592a1",
    "b274cb8ebf87870a",
    "6f9bb4203de7b381",
    "eaecb2a30b22a87f",
    "9924a43cc1315724",
    "bd838d3aafbf8db7",
    "0b1a2a3265d51aea",
    "135079a3231ce660",
    "932b2846e4d70666",
    "e1915f5cb1eca46c",
    "f325965ca16d629f",
    "575ff28e60381be5",
    "724506eb4c328a95",
]


@pytest.mark.parametrize("length", range(64))
def test_siphash_reference_vectors(length: int) -> None:
    out = siphash24(bytes(range(16)), bytes(range(length)))
    assert out.to_bytes(8, "little").hex() == REFERENCE_VECTORS[length]


def test_siphash_paper_appendix_example() -> None:
    # Appendix A of the SipHash paper: a 15-byte message, output 0xa129ca6149be45e5.
    assert siphash24(bytes(range(16)), bytes(range(15))) == 0xA129CA6149BE45E5


def test_siphash_rejects_a_key_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="16-byte key"):
        siphash24(b"short", b"")


def test_str_bloom_hash_uses_a_key_of_sixteen_equal_bytes() -> None:
    # ostree_str_bloom_hash: key byte = the hash index, message = the string without its NUL.
    assert str_bloom_hash("os/stable", 3) == siphash24(bytes([3]) * 16, b"os/stable")
    ref = ("org.example.Os", "os/stable")
    assert collection_ref_hash(ref, 2) == str_bloom_hash(ref[0], 2) ^ str_bloom_hash(ref[1], 2)


def test_bloom_bits_are_hash_mod_size_lsb_first() -> None:
    ref = ("org.example.Os", "os/stable")
    size, k = 16, 3
    bloom = build_bloom([ref], size, k)
    expected = bytearray(size)
    for i in range(k):
        bit = collection_ref_hash(ref, i) % (size * 8)
        expected[bit // 8] |= 1 << (bit % 8)
    assert bloom == bytes(expected)
    assert 1 <= sum(bin(b).count("1") for b in bloom) <= k


def test_bloom_holds_every_added_ref_and_rejects_most_others() -> None:
    held = [("org.example.Os", f"os/stable-v{n}") for n in range(20)]
    size, k = bloom_parameters(len(held), MAX_OSTREE_BLOOM_BYTES)
    bloom = build_bloom(held, size, k)
    assert all(bloom_contains(bloom, k, ref) for ref in held)
    others = [("org.example.Os", f"os/other-{n}") for n in range(500)]
    others += [("org.example.Other", f"os/stable-v{n}") for n in range(500)]
    false_positives = sum(bloom_contains(bloom, k, ref) for ref in others)
    assert false_positives < 60  # about 2% expected; 6% would mean the filter is broken


def test_bloom_parameters_stay_within_one_txt_string() -> None:
    for count in (0, 1, 5, 100, 10_000):
        size, k = bloom_parameters(count, MAX_OSTREE_BLOOM_BYTES)
        assert 1 <= size <= MAX_OSTREE_BLOOM_BYTES and 1 <= k <= 16


def test_bloom_known_answer_accepted_by_libostree() -> None:
    # The rb= filter a daemon advertises for a summary holding only org.example.Os:os/stable
    # (8 bytes, k=16); test_discovery_advertise's find-remotes test has libostree 2022.7 match
    # and pull that ref from exactly this advert.
    assert bloom_parameters(1, MAX_OSTREE_BLOOM_BYTES) == (8, 16)
    bloom = build_bloom([("org.example.Os", "os/stable")], 8, 16)
    assert bloom.hex() == "9408714800240944"
    assert not bloom_contains(bloom, 16, ("org.example.Os", "os/stable-v2"))
