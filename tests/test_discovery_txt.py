"""The TXT records of both adverts: exact bytes, strict decoding, libostree's parsing rules."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lanshare.discovery.txt import (
    MAX_LANSHARE_TXT,
    LanshareTxt,
    OstreeRepoTxt,
    TxtError,
    TxtTooLarge,
    UnsupportedTxtVersion,
    decode_lanshare_txt,
    decode_ostree_txt,
    encode_lanshare_txt,
    encode_ostree_txt,
    lanshare_txt_from_info,
    parse_lanshare_txt,
)

NODE = "0123456789abcdef0123456789abcdef"
DIGEST = "fe" * 32
COMMIT = "ab" * 32


def strings(*items: bytes) -> bytes:
    """Raw TXT RDATA from its strings (written out here, not with the code under test)."""
    return b"".join(bytes([len(i)]) + i for i in items)


def test_lanshare_txt_exact_bytes() -> None:
    txt = LanshareTxt(NODE, DIGEST[:32], "org.example.Os", COMMIT)
    assert encode_lanshare_txt(txt) == strings(
        b"v=1",
        b"n=" + NODE.encode(),
        b"c=org.example.Os",
        b"h=" + DIGEST[:32].encode(),
        b"cp=" + COMMIT.encode(),
    )
    assert decode_lanshare_txt(encode_lanshare_txt(txt)) == txt


def test_lanshare_txt_optional_fields_are_left_out() -> None:
    txt = LanshareTxt(NODE, DIGEST[:32])
    assert encode_lanshare_txt(txt) == strings(b"v=1", b"n=" + NODE.encode(), b"h=" + DIGEST[:32].encode())
    assert decode_lanshare_txt(encode_lanshare_txt(txt)) == txt


def test_lanshare_txt_from_an_info_document() -> None:
    info = {
        "protocol": 1,
        "node_id": NODE,
        "collection_id": None,
        "holdings_digest": DIGEST,
        "newest_checkpoint": COMMIT,
    }
    txt = lanshare_txt_from_info(info)
    assert txt == LanshareTxt(NODE, DIGEST[:32], None, COMMIT)
    assert txt.holdings_match(DIGEST)
    assert not txt.holdings_match("00" * 32)


def test_the_longest_collection_id_a_txt_string_can_hold_fits_in_400_bytes() -> None:
    longest = "a." + "b" * 251  # "c=" + 253 characters: one full 255-byte TXT string
    raw = encode_lanshare_txt(LanshareTxt(NODE, DIGEST[:32], longest, COMMIT))
    assert len(raw) <= MAX_LANSHARE_TXT
    assert decode_lanshare_txt(raw).collection_id == longest
    with pytest.raises(TxtTooLarge):
        encode_lanshare_txt(LanshareTxt(NODE, DIGEST[:32], longest + "x", COMMIT))


def test_keys_are_case_insensitive_first_wins_unknown_ignored() -> None:
    raw = strings(b"V=1", b"N=" + NODE.encode(), b"n=" + b"f" * 32, b"h=" + DIGEST[:32].encode(), b"future=x")
    txt = decode_lanshare_txt(raw)
    assert txt.node_id == NODE


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "version"),
        (b"\x00", "version"),
        (strings(b"v=1", b"h=" + DIGEST[:32].encode()), "lacks n="),
        (strings(b"v=1", b"n=" + NODE.encode()), "lacks h="),
        (strings(b"v=one", b"n=" + NODE.encode(), b"h=" + DIGEST[:32].encode()), "not a number"),
        (strings(b"v=1", b"n=" + NODE.upper().encode(), b"h=" + DIGEST[:32].encode()), "node id"),
        (strings(b"v=1", b"n=" + NODE.encode(), b"h=" + DIGEST.encode()), "holdings digest"),
        (strings(b"v=1", b"n=" + NODE.encode(), b"h=" + DIGEST[:32].encode(), b"cp=abc"), "checkpoint"),
        (strings(b"v=1", b"n=" + NODE.encode(), b"h=" + DIGEST[:32].encode(), b"c=../x"), "collection id"),
        (strings(b"v=1", b"n=" + NODE.encode(), b"h=" + DIGEST[:32].encode(), b"c=a.b\x00"), "printable"),
        (strings(b"v=1", b"n=" + NODE.encode(), b"h=" + DIGEST[:32].encode(), b"\xffx=1"), "ASCII"),
        (strings(b"v=1", b"=1"), "key=value"),
        (strings(b"v=1", b"flag"), "key=value"),
        (b"\x05v=1", "claims 5 bytes"),
    ],
)
def test_garbage_lanshare_txt_is_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(TxtError, match=message):
        decode_lanshare_txt(raw)
    assert parse_lanshare_txt(raw) is None


def test_oversized_lanshare_txt_is_rejected_before_parsing() -> None:
    raw = strings(
        b"v=1", b"n=" + NODE.encode(), b"h=" + DIGEST[:32].encode(), b"pad=" + b"x" * 250, b"p=" + b"y" * 90
    )
    assert len(raw) > MAX_LANSHARE_TXT
    with pytest.raises(TxtTooLarge):
        decode_lanshare_txt(raw)


def test_another_protocol_version_is_its_own_error() -> None:
    with pytest.raises(UnsupportedTxtVersion) as caught:
        decode_lanshare_txt(strings(b"v=2", b"n=" + NODE.encode(), b"h=" + DIGEST[:32].encode()))
    assert caught.value.version == 2


@given(st.binary(max_size=600))
def test_any_bytes_decode_or_raise_txt_error(raw: bytes) -> None:
    with contextlib.suppress(TxtError):
        decode_lanshare_txt(raw)
    with contextlib.suppress(TxtError):
        decode_ostree_txt(raw)


# --- _ostree_repo._tcp -----------------------------------------------------------------------


def test_ostree_txt_exact_bytes() -> None:
    txt = OstreeRepoTxt(bloom=b"\x01\x80\x00\xff", k=3, summary_timestamp=0x0102030405060708, repo_index=0)
    assert encode_ostree_txt(txt) == strings(
        b"v=\x01",
        b"rb=\x03\x01\x01\x80\x00\xff",
        b"st=\x01\x02\x03\x04\x05\x06\x07\x08",
        b"ri=\x00\x00",
    )
    assert decode_ostree_txt(encode_ostree_txt(txt)) == txt


def good_ostree(**replace: bytes) -> bytes:
    fields = {"v": b"\x01", "rb": b"\x02\x01" + bytes(16), "st": struct.pack(">Q", 5), "ri": b"\x00\x07"}
    fields.update(replace)
    return strings(*(k.encode() + b"=" + v for k, v in fields.items()))


def test_ostree_txt_parses_like_libostree() -> None:
    txt = decode_ostree_txt(good_ostree())
    assert (txt.k, txt.summary_timestamp, txt.repo_index, len(txt.bloom)) == (2, 5, 7, 16)
    # Invalid strings are skipped, keys are lower-cased, the first of a repeated key wins.
    raw = strings(b"=junk", b"\x01bad=1", b"V=\x01", b"v=\x02") + good_ostree()[4:]
    assert decode_ostree_txt(raw).repo_index == 7


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (good_ostree(v=b"1"), "version 49"),  # the text "1" is not the byte 0x01
        (good_ostree(v=b"\x01\x00"), "v= has 2 bytes"),
        (good_ostree(st=b"\x00" * 7), "st= has 7 bytes"),
        (good_ostree(ri=b"\x00"), "ri= has 1 bytes"),
        (good_ostree(rb=b"\x00\x01\xff"), "k=0"),
        (good_ostree(rb=b"\x01\x02\xff"), "hash id 2"),
        (good_ostree(rb=b"\x01\x01"), "0 bytes"),
        (good_ostree(rb=b"\x01"), "well-formed rb="),
        (strings(b"v=\x01", b"st=" + bytes(8), b"ri=\x00\x00"), "well-formed rb="),
        (strings(b"v"), "lacks v="),
    ],
)
def test_ostree_txt_libostree_would_ignore_is_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(TxtError, match=message):
        decode_ostree_txt(raw)


def test_ostree_txt_values_out_of_range_are_refused() -> None:
    with pytest.raises(TxtError, match="251 bytes"):
        encode_ostree_txt(OstreeRepoTxt(bytes(251), 1, 0))
    with pytest.raises(TxtError, match="repo index"):
        encode_ostree_txt(OstreeRepoTxt(bytes(8), 1, 0, repo_index=70_000))
    encode_ostree_txt(OstreeRepoTxt(bytes(250), 1, 2**64 - 1, repo_index=65_535))
