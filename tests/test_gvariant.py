"""The GVariant codec: byte-exact with GLib, round trips, and hostile input.

GLib is the oracle, reached through the Debian ``ostree`` CLI (python3-gi is not a test
dependency): ``ostree commit --add-metadata=KEY=VALUE`` parses VALUE in GVariant text format and
serializes it with GLib into the commit object, so every value below is written by GLib and then
decoded and re-encoded by lanshare, byte for byte.  Real ``.commit``/``.dirtree``/``.dirmeta``/
``summary``/``.commitmeta`` objects and ``.filez`` headers written by ``ostree`` are checked the
same way, and ``ostree show --raw`` text is compared with what lanshare decodes.

Fuzzing: the ``test_fuzz_*`` tests run a seeded, CI-sized number of examples.  Set
``LANSHARE_FUZZ_EXAMPLES`` to run more, with fresh random inputs each time; nightly runs use at
least 100,000::

    LANSHARE_FUZZ_EXAMPLES=100000 python -m pytest tests/test_gvariant.py -k fuzz
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanshare import gvariant
from lanshare.errors import CorruptObject
from lanshare.gvariant import GVariantError, Variant, swap32, swap64
from lanshare.ostree import content
from lanshare.ostree.objects import (
    ARCHIVE_HEADER_TYPE,
    COMMIT_TYPE,
    DIRMETA_TYPE,
    DIRTREE_TYPE,
    FILE_HEADER_TYPE,
    METADATA_TYPE,
    ObjectType,
    validate_metadata_object,
)
from lanshare.ostree.summary import parse_summary
from tests.conftest import build_tree, ostree, requires_ostree

SUMMARY_TYPE = "(a(s(taya{sv}))a{sv})"

OSTREE_TYPES = {
    "commit": COMMIT_TYPE,
    "dirtree": DIRTREE_TYPE,
    "dirmeta": DIRMETA_TYPE,
    "metadata": METADATA_TYPE,
    "summary": SUMMARY_TYPE,
    "file header": FILE_HEADER_TYPE,
    "archive header": ARCHIVE_HEADER_TYPE,
}

_FUZZ_OVERRIDE = int(os.environ.get("LANSHARE_FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(ci_examples: int) -> settings:
    """A seeded CI-sized run, or LANSHARE_FUZZ_EXAMPLES fresh random examples when that is set."""
    return settings(
        max_examples=_FUZZ_OVERRIDE or ci_examples,
        derandomize=not _FUZZ_OVERRIDE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- vectors from the GVariant specification (§ "Examples"), computed by its rules ----------------

SPEC_VECTORS: list[tuple[str, Any, str]] = [
    ("s", "hello world", "68656c6c6f20776f726c6400"),
    ("ms", "hello world", "68656c6c6f20776f726c640000"),
    ("ms", None, ""),
    ("as", ["i", "can", "has", "strings?"], "6900 63616e00 68617300 737472696e67733f00 02060a13"),
    ("(si)", ("foo", -1), "666f6f00 ffffffff 04"),
    ("((ys)as)", ((0x61, "bc"), ["d", "ef"]), "61626300 6400656600 0205 04"),
    ("ay", b"\x04\x05\x06\x07", "04050607"),
    ("ai", [4, 258], "04000000 02010000"),
    ("{si}", ("a key", 514), "61206b6579000000 02020000 06"),
    ("a{si}", {"hi": -2, "bye": -1}, "6869 0000 feffffff 03 000000 62796500 ffffffff 04 0915"),
    ("amb", [True, None, False], "01 00 010102"),
    ("mi", 5, "05000000"),
    ("mi", None, ""),
    ("mas", [], "00"),
    ("b", True, "01"),
    ("()", (), "00"),
    ("a()", [(), ()], "0000"),
    ("(y())", (1, ()), "0100"),
    ("as", [], ""),
    ("a{sv}", {}, ""),
    ("a(yt)", [], ""),
    # alignment padding: y then 7 bytes of padding before the 8-aligned t
    ("(yt)", (1, 2), "01 00000000000000 0200000000000000"),
    ("a(yt)", [(1, 2), (3, 4)], "0100000000000000 0200000000000000 0300000000000000 0400000000000000"),
    # a fixed-size tuple is padded at its end to its alignment
    ("(ty)", (2, 1), "0200000000000000 01 00000000000000"),
    # the variant starts 8-aligned: 'k\0' then 6 bytes of padding, then 7i value, NUL, "mi"
    ("(sv)", ("k", Variant("mi", 7)), "6b00 000000000000 07000000 00 6d69 02"),
    ("v", Variant("v", Variant("i", 5)), "05000000 00 69 00 76"),
    ("v", Variant("()", ()), "00 00 2829"),
    # big-endian helpers are the caller's business: the codec itself is little-endian
    ("u", swap32(0x41ED), "000041ed"),
    ("t", swap64(1_700_000_000), "000000006553f100"),
]


@pytest.mark.parametrize(("signature", "value", "hex_bytes"), SPEC_VECTORS)
def test_spec_vectors(signature: str, value: Any, hex_bytes: str) -> None:
    expected = bytes.fromhex(hex_bytes.replace(" ", ""))
    assert gvariant.encode(signature, value) == expected
    assert gvariant.decode(signature, expected) == value


def test_swap_helpers() -> None:
    assert swap32(0x01020304) == 0x04030201
    assert swap64(0x0102030405060708) == 0x0807060504030201
    assert swap32(0) == 0 and swap64(0) == 0
    assert swap32(1) == 1 << 24 and swap64(1) == 1 << 56
    for value in (0o100644, 0o40755, 0xFFFFFFFF, 1234):
        assert swap32(swap32(value)) == value
        assert struct.pack("<I", swap32(value)) == struct.pack(">I", value)
    for value in (1_700_000_000, 2**64 - 1, 300_000):
        assert swap64(swap64(value)) == value
        assert struct.pack("<Q", swap64(value)) == struct.pack(">Q", value)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
@settings(max_examples=200, derandomize=True, database=None)
def test_swap_helpers_are_big_endian_views(u32: int, u64: int) -> None:
    assert gvariant.encode("u", swap32(u32)) == u32.to_bytes(4, "big")
    assert gvariant.encode("t", swap64(u64)) == u64.to_bytes(8, "big")
    assert swap32(swap32(u32)) == u32 and swap64(swap64(u64)) == u64


# --- GLib-made vectors: ostree commit --add-metadata=KEY=@TYPE TEXT ----------------------------------


def _string_list(*lengths: int) -> list[str]:
    return [chr(ord("a") + i) * n for i, n in enumerate(lengths)]


# (key, type, GVariant text, the Python value lanshare must decode, encoded size or None)
GLIB_CASES: list[tuple[str, str, str, Any, int | None]] = [
    ("b", "b", "true", True, 1),
    ("y", "y", "255", 255, 1),
    ("n", "n", "-32768", -32768, 2),
    ("q", "q", "65535", 65535, 2),
    ("i", "i", "-2147483648", -(2**31), 4),
    ("u", "u", "4294967295", 2**32 - 1, 4),
    ("x", "x", "-9223372036854775808", -(2**63), 8),
    ("t", "t", "18446744073709551615", 2**64 - 1, 8),
    ("h", "h", "7", 7, 4),
    ("d", "d", "-1.5e+300", -1.5e300, 8),
    ("s", "s", "'ünïcødé ✓ \\'q\\''", "ünïcødé ✓ 'q'", None),
    ("empty-s", "s", "''", "", 1),
    ("o", "o", "'/org/example/Obj_1'", "/org/example/Obj_1", None),
    ("g", "g", "'a{sv}(yt)'", "a{sv}(yt)", None),
    ("yt", "(yt)", "(1, 2)", (1, 2), 16),
    ("ayt", "a(yt)", "[(1, 2), (3, 4)]", [(1, 2), (3, 4)], 32),
    ("ty", "(ty)", "(2, 1)", (2, 1), 16),
    ("sv", "(sv)", "('k', <@mi 7>)", ("k", Variant("mi", 7)), 16),
    ("mixed-alignment", "(yqyuyxyd)", "(1, 2, 3, 4, 5, 6, 7, 8.5)", (1, 2, 3, 4, 5, 6, 7, 8.5), 40),
    ("ysay", "a(ysay)", "[(1, 'a', [2]), (3, '', [])]", [(1, "a", b"\x02"), (3, "", b"")], None),
    ("unit", "()", "()", (), 1),
    ("units", "a()", "[(), (), ()]", [(), (), ()], 3),
    ("y-unit", "(y())", "(1, ())", (1, ()), 2),
    ("unit-s", "(()s)", "((), 'x')", ((), "x"), None),
    ("nested-variants", "v", "<<int32 5>>", Variant("v", Variant("i", 5)), None),
    (
        "variant-of-array",
        "av",
        "[<'a'>, <@ay []>, <(1, 2)>]",
        [Variant("s", "a"), Variant("ay", b""), Variant("(ii)", (1, 2))],
        None,
    ),
    ("maybe-nothing", "ms", "nothing", None, 0),
    ("maybe-just", "ms", "just 'x'", "x", 3),
    ("maybe-int", "mi", "just 7", 7, 4),
    ("maybe-int-nothing", "mi", "nothing", None, 0),
    ("maybe-empty-array", "mas", "just []", [], 1),
    ("maybe-maybe", "mmi", "just just 5", 5, None),
    ("maybe-tuple", "m(yt)", "just (1, 2)", (1, 2), 16),
    ("maybe-variant", "mv", "just <'z'>", Variant("s", "z"), None),
    ("maybes", "amb", "[just true, nothing, just false]", [True, None, False], 5),
    ("maybe-strings", "ams", "[just 'a', nothing, just '']", ["a", None, ""], None),
    ("empty-as", "as", "[]", [], 0),
    ("empty-ay", "ay", "[]", b"", 0),
    ("empty-dict", "a{sv}", "{}", {}, 0),
    ("empty-ayt", "a(yt)", "[]", [], 0),
    ("aay", "aay", "[[], [1], []]", [b"", b"\x01", b""], None),
    ("bytes", "ay", "[0, 1, 255]", b"\x00\x01\xff", 3),
    ("dict", "a{sv}", "{'a': <1>, 'b': <'x'>}", {"a": Variant("i", 1), "b": Variant("s", "x")}, None),
    ("dict-entry", "{sv}", "{'a', <1>}", ("a", Variant("i", 1)), None),
    ("int-keys", "a{ys}", "{1: 'x', 2: ''}", {1: "x", 2: ""}, None),
    ("nested-dict", "a{sa{sv}}", "{'o': {'i': <@t 3>}}", {"o": {"i": Variant("t", 3)}}, None),
    ("ostree-related", "a(say)", "[('r', [1, 2])]", [("r", b"\x01\x02")], None),
    # framing offsets: 255 bytes in all keeps 1-byte offsets; one byte more needs 2-byte ones
    ("width-1-edge", "as", repr(_string_list(49, 49, 49, 49, 49)), _string_list(49, 49, 49, 49, 49), 255),
    ("width-2-edge", "as", repr(_string_list(49, 49, 49, 49, 50)), _string_list(49, 49, 49, 49, 50), 261),
    ("tuple-width-2", "(ss)", "('" + "x" * 300 + "', 'y')", ("x" * 300, "y"), 305),
]

# Containers past 65535 bytes get 4-byte framing offsets; committed separately (they are big).
GLIB_BIG_CASES: list[tuple[str, str, str, Any, int | None]] = [
    ("width-2-top", "as", repr(_string_list(32765, 32764)), _string_list(32765, 32764), 65535),
    ("width-4-edge", "as", repr(_string_list(32765, 32765)), _string_list(32765, 32765), 65540),
    ("tuple-width-4", "(ss)", "('" + "x" * 70000 + "', 'y')", ("x" * 70000, "y"), 70007),
]


@pytest.fixture(scope="module")
def glib_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive repository (and an empty tree beside it) for GLib to write commits into."""
    base = tmp_path_factory.mktemp("glib")
    ostree("init", f"--repo={base / 'repo'}", "--mode=archive")
    (base / "empty").mkdir()
    return base


def glib_commit(base: Path, metadata: list[tuple[str, str, str]]) -> bytes:
    """Have ostree (GLib) serialize a commit carrying each (key, type, text) as metadata."""
    args = [f"--add-metadata={key}=@{signature} {text}" for key, signature, text in metadata]
    out = ostree(
        "commit", f"--repo={base / 'repo'}", "--orphan", "--owner-uid=0", "--owner-gid=0",
        "--no-xattrs", "--timestamp=@1700000000", *args, base / "empty",
    )  # fmt: skip
    checksum = out.stdout.strip()
    data = (base / "repo" / "objects" / checksum[:2] / f"{checksum[2:]}.commit").read_bytes()
    assert hashlib.sha256(data).hexdigest() == checksum
    return data


@requires_ostree
@pytest.mark.parametrize("cases", [GLIB_CASES, GLIB_BIG_CASES], ids=["small", "big"])
def test_glib_written_values(glib_repo: Path, cases: list[tuple[str, str, str, Any, int | None]]) -> None:
    data = glib_commit(glib_repo, [(key, sig, text) for key, sig, text, _, _ in cases])
    decoded = gvariant.decode(COMMIT_TYPE, data)
    metadata = decoded[0]
    for key, signature, _, value, size in cases:
        assert metadata[key] == Variant(signature, value), key
        if size is not None:
            assert len(gvariant.encode(signature, value)) == size, key
    assert gvariant.encode(COMMIT_TYPE, decoded) == data


@requires_ostree
def test_glib_written_commit_with_one_byte_offsets(glib_repo: Path) -> None:
    data = glib_commit(glib_repo, [("k", "s", "'v'")])
    assert len(data) <= 255
    assert gvariant.encode(COMMIT_TYPE, gvariant.decode(COMMIT_TYPE, data)) == data


# --- real objects written by ostree ------------------------------------------------------------------


def _set_xattr(path: Path, name: str, value: bytes) -> bool:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError:
        return False
    return True


def read_frame(data: bytes) -> bytes:
    """The archive header inside a ``.filez`` (after its BE u32 length and 4 bytes of padding)."""
    length = int.from_bytes(data[:4], "big")
    return data[8 : 8 + length]


class OstreeObjects:
    """Every object of a small repository written by ostree, with what was asked of it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.repo = base / "repo"
        self.objects: list[tuple[str, str, bytes]] = []  # (kind, name, bytes)
        self.commits: list[str] = []
        self.xattrs = False

    def of_kind(self, kind: str) -> list[tuple[str, bytes]]:
        return [(name, data) for k, name, data in self.objects if k == kind]


@pytest.fixture(scope="module")
def ostree_objects(tmp_path_factory: pytest.TempPathFactory) -> OstreeObjects:
    """A repository written by ostree: two commits, a >64 KiB dirtree, xattrs, summary, commitmeta."""
    result = OstreeObjects(tmp_path_factory.mktemp("ostree-objects"))
    tree = build_tree(result.base / "tree")
    many = tree / "many"
    many.mkdir()
    for i in range(1700):
        (many / f"f{i:05d}").write_bytes(b"")
    result.xattrs = _set_xattr(tree / "etc", "user.lanshare", b"dir attr") and _set_xattr(
        tree / "etc" / "os-release", "user.lanshare", b"file attr\0with NUL"
    )
    repo = result.repo
    ostree("init", f"--repo={repo}", "--mode=archive")
    common = ["--owner-uid=1234", "--owner-gid=5678", f"--repo={repo}", "--branch=os/stable"]
    first = ostree(
        "commit", *common, "--timestamp=@1700000000", "--add-metadata-string=version=1.0",
        "--subject=first", tree,
    ).stdout.strip()  # fmt: skip
    (tree / "etc" / "added").write_text("second\n")
    second = ostree(
        "commit", *common, "--timestamp=@1700000100", "--add-metadata-string=version=1.1",
        "--add-detached-metadata-string=note=detached", "--subject=second", "--body=body text", tree,
    ).stdout.strip()  # fmt: skip
    result.commits = [first, second]
    ostree("summary", f"--repo={repo}", "-u", "--add-metadata=lanshare.test=@(yt) (1, 2)")
    for path in sorted((repo / "objects").glob("*/*")):
        name = path.parent.name + path.name
        result.objects.append((name.split(".")[1], name, path.read_bytes()))
    result.objects.append(("summary", "summary", (repo / "summary").read_bytes()))
    return result


@requires_ostree
def test_ostree_objects_round_trip_byte_exact(ostree_objects: OstreeObjects) -> None:
    sizes: dict[str, list[int]] = {}
    for kind, name, data in ostree_objects.objects:
        if kind == "filez":
            signature, raw = ARCHIVE_HEADER_TYPE, read_frame(data)
        else:
            signature = {"commit": COMMIT_TYPE, "dirtree": DIRTREE_TYPE, "dirmeta": DIRMETA_TYPE}.get(
                kind, METADATA_TYPE if kind == "commitmeta" else SUMMARY_TYPE
            )
            raw = data
            if kind in ("commit", "dirtree", "dirmeta"):
                assert hashlib.sha256(data).hexdigest() == name.split(".")[0]
        assert gvariant.encode(signature, gvariant.decode(signature, raw)) == raw, name
        sizes.setdefault(kind, []).append(len(raw))
    assert set(sizes) == {"commit", "commitmeta", "dirtree", "dirmeta", "filez", "summary"}
    # every framing-offset width was exercised by a real dirtree
    assert min(sizes["dirtree"]) <= 255 < max(sizes["dirtree"])
    assert any(255 < n <= 65535 for n in sizes["dirtree"])
    assert max(sizes["dirtree"]) > 65535


@requires_ostree
def test_big_endian_fields_of_ostree_objects(ostree_objects: OstreeObjects) -> None:
    first, second = ostree_objects.commits
    commits = dict(ostree_objects.of_kind("commit"))
    raw = gvariant.decode(COMMIT_TYPE, commits[f"{second}.commit"])
    metadata, parent, related, subject, body, timestamp, _, root_meta = raw
    assert swap64(timestamp) == 1_700_000_100
    assert parent == bytes.fromhex(first)
    assert (subject, body, related) == ("second", "body text", [])
    assert metadata["version"] == Variant("s", "1.1")
    assert metadata["ostree.ref-binding"] == Variant("as", ["os/stable"])
    dirmeta = dict(ostree_objects.of_kind("dirmeta"))
    uid, gid, mode, _ = gvariant.decode(DIRMETA_TYPE, dirmeta[f"{root_meta.hex()}.dirmeta"])
    assert (swap32(uid), swap32(gid)) == (1234, 5678)
    assert uid == 0xD2040000
    assert stat.S_ISDIR(swap32(mode))
    headers = [
        gvariant.decode(ARCHIVE_HEADER_TYPE, read_frame(d)) for _, d in ostree_objects.of_kind("filez")
    ]
    sizes = {swap64(h[0]) for h in headers}
    assert 300_000 in sizes and 0 in sizes  # usr/lib/big.bin and the empty files
    assert {(swap32(h[1]), swap32(h[2])) for h in headers} == {(1234, 5678)}
    symlinks = {h[5] for h in headers if stat.S_ISLNK(swap32(h[3]))}
    assert symlinks == {"usr/bin", "/nonexistent/target"}
    if ostree_objects.xattrs:
        all_xattrs = [x for h in headers for x in h[6]]
        all_xattrs += [
            x for _, d in ostree_objects.of_kind("dirmeta") for x in gvariant.decode(DIRMETA_TYPE, d)[3]
        ]
        assert (b"user.lanshare\0", b"dir attr") in all_xattrs
        assert (b"user.lanshare\0", b"file attr\0with NUL") in all_xattrs
    commitmeta = dict(ostree_objects.of_kind("commitmeta"))
    assert gvariant.decode(METADATA_TYPE, commitmeta[f"{second}.commitmeta"]) == {
        "note": Variant("s", "detached")
    }
    summary_refs, summary_meta = gvariant.decode(
        SUMMARY_TYPE, dict(ostree_objects.of_kind("summary"))["summary"]
    )
    assert [(ref, checksum.hex()) for ref, (_, checksum, _) in summary_refs] == [("os/stable", second)]
    assert summary_meta["lanshare.test"] == Variant("(yt)", (1, 2))


_BYTE_LIST = re.compile(r"\[byte ((?:0x[0-9a-f]{2}(?:, )?)+)\]")


@requires_ostree
def test_ostree_show_raw_text_agrees(ostree_objects: OstreeObjects) -> None:
    """``ostree show -B --raw`` prints GLib's own decoding of the commit: compare it with ours."""
    second = ostree_objects.commits[1]
    data = dict(ostree_objects.of_kind("commit"))[f"{second}.commit"]
    _, parent, _, subject, body, timestamp, root_tree, root_meta = gvariant.decode(COMMIT_TYPE, data)
    text = ostree("show", f"--repo={ostree_objects.repo}", "-B", "--raw", second).stdout
    byte_lists = [bytes(int(b, 16) for b in m.split(", ")) for m in _BYTE_LIST.findall(text)]
    assert byte_lists == [parent, root_tree, root_meta]
    assert f"uint64 {timestamp}" in text
    assert f"'{subject}', '{body}'" in text
    assert "'version': <'1.1'>" in text and "'ostree.ref-binding': <['os/stable']>" in text
    # without -B, ostree byte-swaps: the timestamp then reads as the real time
    swapped = ostree("show", f"--repo={ostree_objects.repo}", "--raw", second).stdout
    assert f"uint64 {swap64(timestamp)}" in swapped and swap64(timestamp) == 1_700_000_100
    # ostree reads what lanshare encodes: a dirtree re-encoded by lanshare, printed by GLib
    trees = dict(ostree_objects.of_kind("dirtree"))
    tree = gvariant.decode(DIRTREE_TYPE, trees[f"{root_tree.hex()}.dirtree"])
    path = ostree_objects.base / "reencoded.dirtree"
    path.write_bytes(gvariant.encode(DIRTREE_TYPE, tree))
    printed = ostree(
        "show", f"--repo={ostree_objects.repo}", f"--print-variant-type={DIRTREE_TYPE}", path
    ).stdout
    for name, _ in tree[0]:
        assert f"('{name}', [" in printed
    for name, _, _ in tree[1]:
        assert f"('{name}', [" in printed


# --- generated types and values ----------------------------------------------------------------------

BASIC_CODES = "bynqiuxthdsog"
_INT_RANGES = {
    "y": (0, 2**8 - 1),
    "n": (-(2**15), 2**15 - 1),
    "q": (0, 2**16 - 1),
    "i": (-(2**31), 2**31 - 1),
    "h": (-(2**31), 2**31 - 1),
    "u": (0, 2**32 - 1),
    "x": (-(2**63), 2**63 - 1),
    "t": (0, 2**64 - 1),
}
_OBJECT_PATHS = ["/", "/a", "/org/example/Obj_1"]
_SIGNATURES = ["", "s", "a{sv}", "(ii)", "ayas", "v"]  # 'g' values are D-Bus signatures: no 'm'


def type_strings(max_leaves: int = 6, variants: bool = True) -> st.SearchStrategy[str]:
    """GVariant type strings: basic types, ay, v, arrays, maybes, tuples, dict entries, dicts."""
    leaves = st.sampled_from([*BASIC_CODES, "ay", *(["v"] if variants else [])])

    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        keys = st.sampled_from(BASIC_CODES)
        return st.one_of(
            children.map(lambda t: "a" + t),
            children.map(lambda t: "m" + t),
            st.lists(children, max_size=4).map(lambda ms: "(" + "".join(ms) + ")"),
            st.tuples(keys, children).map(lambda kv: "{" + kv[0] + kv[1] + "}"),
            st.tuples(keys, children).map(lambda kv: "a{" + kv[0] + kv[1] + "}"),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


def _type_end(sig: str, pos: int) -> int:
    """Index just past the complete type starting at ``sig[pos]`` (test-side parser)."""
    code = sig[pos]
    if code in "am":
        return _type_end(sig, pos + 1)
    if code in "({":
        close = ")" if code == "(" else "}"
        pos += 1
        while sig[pos] != close:
            pos = _type_end(sig, pos)
        return pos + 1
    return pos + 1


def _members(inner: str) -> list[str]:
    members, pos = [], 0
    while pos < len(inner):
        end = _type_end(inner, pos)
        members.append(inner[pos:end])
        pos = end
    return members


def values_of(sig: str, variant_depth: int = 2) -> st.SearchStrategy[Any]:
    """Python values of GVariant type ``sig``, as lanshare represents them."""
    code = sig[0]
    if code == "b":
        return st.booleans()
    if code in _INT_RANGES:
        low, high = _INT_RANGES[code]
        return st.integers(low, high)
    if code == "d":
        # GLib's text parser refuses subnormals; NaN is never equal to itself.
        return st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False)
    if code == "s":
        return st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12)
    if code == "o":
        return st.sampled_from(_OBJECT_PATHS)
    if code == "g":
        return st.sampled_from(_SIGNATURES)
    if sig == "ay":
        return st.binary(max_size=24)
    if code == "v":
        return typed_values(max_leaves=3, variant_depth=variant_depth - 1).map(lambda tv: Variant(*tv))
    if code == "m":
        return st.none() | values_of(sig[1:], variant_depth)
    if code == "a":
        element = sig[1:]
        if element[0] == "{":
            key, value = _members(element[1:-1])
            return st.dictionaries(values_of(key), values_of(value, variant_depth), max_size=4)
        return st.lists(values_of(element, variant_depth), max_size=4)
    if code == "(":
        return st.tuples(*(values_of(m, variant_depth) for m in _members(sig[1:-1])))
    if code == "{":
        key, value = _members(sig[1:-1])
        return st.tuples(values_of(key), values_of(value, variant_depth))
    raise AssertionError(f"no strategy for {sig!r}")


def typed_values(max_leaves: int = 6, variant_depth: int = 2) -> st.SearchStrategy[tuple[str, Any]]:
    """(type string, value of that type) pairs."""
    return type_strings(max_leaves, variants=variant_depth > 0).flatmap(
        lambda sig: st.tuples(st.just(sig), values_of(sig, variant_depth))
    )


@given(typed_values())
@settings(max_examples=1500, derandomize=True, database=None, deadline=None)
def test_round_trip_generated_values(typed: tuple[str, Any]) -> None:
    signature, value = typed
    data = gvariant.encode(signature, value)
    decoded = gvariant.decode(signature, data)
    assert decoded == value
    assert gvariant.encode(signature, decoded) == data
    # inside a variant (8-aligned, type string appended) the value keeps its bytes
    assert gvariant.encode("v", Variant(signature, value)) == data + b"\0" + signature.encode()


def _quote(text: str) -> str:
    out = ["'"]
    for ch in text:
        code = ord(ch)
        if ch in "'\\":
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append("'")
    return "".join(out)


def gvariant_text(sig: str, value: Any) -> str:
    """GVariant text format for ``value`` (types flow down from an ``@TYPE`` annotation)."""
    code = sig[0]
    if code == "b":
        return "true" if value else "false"
    if code in _INT_RANGES:
        return str(value)
    if code == "d":
        return repr(float(value))
    if code in "sog":
        return _quote(value)
    if sig == "ay":
        return "[" + ", ".join(str(b) for b in value) + "]"
    if code == "v":
        return f"<@{value.signature} {gvariant_text(value.signature, value.value)}>"
    if code == "m":
        return "nothing" if value is None else "just " + gvariant_text(sig[1:], value)
    if code == "a" and sig[1] == "{":
        key, val = _members(sig[2:-1])
        items = (f"{gvariant_text(key, k)}: {gvariant_text(val, v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if code == "a":
        return "[" + ", ".join(gvariant_text(sig[1:], v) for v in value) + "]"
    if code == "(":
        members = _members(sig[1:-1])
        parts = [gvariant_text(m, v) for m, v in zip(members, value, strict=True)]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
    if code == "{":
        key, val = _members(sig[1:-1])
        return "{" + gvariant_text(key, value[0]) + ", " + gvariant_text(val, value[1]) + "}"
    raise AssertionError(f"no text for {sig!r}")


@requires_ostree
@given(st.lists(typed_values(), min_size=1, max_size=8))
@settings(max_examples=60, derandomize=True, database=None, deadline=None)
def test_glib_encodes_generated_values_identically(glib_repo: Path, batch: list[tuple[str, Any]]) -> None:
    """Differential test: GLib serializes generated values exactly as lanshare does."""
    data = glib_commit(glib_repo, [(f"k{i}", sig, gvariant_text(sig, v)) for i, (sig, v) in enumerate(batch)])
    decoded = gvariant.decode(COMMIT_TYPE, data)
    for i, (sig, value) in enumerate(batch):
        assert decoded[0][f"k{i}"] == Variant(sig, value)
    assert gvariant.encode(COMMIT_TYPE, decoded) == data


# --- hostile input ------------------------------------------------------------------------------------


def _nested_variants(levels: int) -> bytes:
    data = b"\0\0()"  # <()>
    for _ in range(levels):
        data += b"\0v"
    return data


BAD_INPUT: list[tuple[str, bytes]] = [
    ("s", b"abc"),
    ("s", b""),
    ("s", b"a\0b\0"),
    ("s", b"\xff\xfe\0"),
    ("s", b"\xed\xa0\x80\0"),  # an encoded surrogate is not UTF-8
    ("b", b"\x02"),
    ("i", b"\0\0\0"),
    ("(yt)", b"\0" * 15),
    ("()", b""),
    ("as", b"a\0\x05"),
    ("as", b"a\0b\0\x04\x02"),
    ("as", b"\xff"),
    ("a(ss)", b"a\0b\0\x02\x09\xff"),
    ("(ss)", b"a\0b\0\xff"),
    ("(ss)", b""),
    ("(uuua(ayay))", b""),
    ("(uuua(ayay))", b"\0" * 12 + b"\x05"),
    ("v", b""),
    ("v", b"\0\0"),
    ("v", b"abc"),
    ("v", b"\0zz"),
    ("v", b"\0" + b"a" * 300 + b"y"),
    ("v", b"\0" + b"a" * 100 + b"y"),
    ("v", b"\0" + b"(" * 80 + b")" * 80),
    ("v", b"\0a{vs}"),
    ("v", b"\0{s}"),
    ("v", b"\0\xff"),
    ("v", _nested_variants(10_000)),
    ("mi", b"\0\0"),
    ("ms", b"a"),
    ("a{sv}", b"k\0\0\0\0\0\0\0\x02\0b\x02\x0c"),  # a boolean of 2
    ("a{sv}", b"\x00" * 300),
    (COMMIT_TYPE, b"\xff" * 64),
    (SUMMARY_TYPE, b"\x01"),
]


@pytest.mark.parametrize(("signature", "data"), BAD_INPUT)
def test_malformed_input_is_a_gvariant_error(signature: str, data: bytes) -> None:
    with pytest.raises(GVariantError):
        gvariant.decode(signature, data)


@pytest.mark.parametrize(
    "signature", ["", "a", "(", "(y", "{sv", "{s}", "{svs}", "{vs}", "{ays}", "z", "ii", "a" * 300 + "y",
                  "a" * 100 + "y", "(" * 70 + ")" * 70, "m" * 70 + "y", "y)"]
)  # fmt: skip
def test_invalid_type_strings(signature: str) -> None:
    with pytest.raises(GVariantError):
        gvariant.parse_type(signature)
    with pytest.raises(GVariantError):
        gvariant.decode(signature, b"\0")


@pytest.mark.parametrize(
    ("signature", "value"),
    [("s", "a\0b"), ("y", 256), ("y", -1), ("t", 2**64), ("(yy)", (1,)), ("v", 5), ("ay", "str"),
     ("a{sv}", [("k", Variant("s", "v"))]), ("d", "x"), ("v", Variant("zz", 1))],
)  # fmt: skip
def test_unencodable_values_are_a_gvariant_error(signature: str, value: Any) -> None:
    with pytest.raises(GVariantError):
        gvariant.encode(signature, value)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    ok = _nested_variants(10)
    assert gvariant.decode("v", ok) is not None
    with pytest.raises(GVariantError, match="deep"):
        gvariant.decode("v", _nested_variants(200))
    # arrays of variants, each holding the next level
    nested: Any = Variant("()", ())
    for _ in range(20):
        nested = Variant("av", [nested])
    encoded = gvariant.encode("v", nested)
    assert gvariant.decode("v", encoded) == nested
    for _ in range(40):
        nested = Variant("av", [nested])
    with pytest.raises(GVariantError):
        gvariant.decode("v", gvariant.encode("v", nested))


# --- fuzzing: anything decodes or raises GVariantError (and CorruptObject one level up) --------------

_META_KINDS = (ObjectType.COMMIT, ObjectType.DIR_TREE, ObjectType.DIR_META, ObjectType.COMMIT_META)


def check_decodes_or_refuses(signature: str, data: bytes) -> None:
    """Decode ``data``; a result must re-encode to a normal form that is stable."""
    try:
        value = gvariant.decode(signature, data)
    except GVariantError:
        return
    normal = gvariant.encode(signature, value)
    assert gvariant.encode(signature, gvariant.decode(signature, normal)) == normal


def check_objects_or_corrupt(data: bytes) -> None:
    """The object layer turns every malformation into CorruptObject naming the object."""
    for kind in _META_KINDS:
        try:
            validate_metadata_object(kind, data, "fuzzed")
        except CorruptObject as e:
            assert e.name == "fuzzed"
    try:
        content.parse_archive_header(data, "fuzzed.filez")
    except CorruptObject as e:
        assert e.name == "fuzzed.filez"
    with contextlib.suppress(CorruptObject):
        parse_summary(data)


def check_all(data: bytes) -> None:
    for signature in OSTREE_TYPES.values():
        check_decodes_or_refuses(signature, data)
    check_objects_or_corrupt(data)


@given(st.binary(max_size=600))
@fuzz_settings(2000)
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_all(data)


# Mutations: (operation, position, argument); negative positions count from the end, where the
# framing offsets live.
_positions = st.integers(0, 1 << 16) | st.integers(-24, -1)
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("xor"), _positions, st.integers(1, 255)),
        st.tuples(st.just("set"), _positions, st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF])),
        st.tuples(st.just("truncate"), _positions, st.just(0)),
        st.tuples(st.just("insert"), _positions, st.integers(0, 255)),
        st.tuples(st.just("delete"), _positions, st.integers(1, 8)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, position, arg in ops:
        size = len(out)
        at = (position % (size + 1)) if position >= 0 else max(0, size + position)
        if op == "xor" and at < size:
            out[at] ^= arg
        elif op == "set" and at < size:
            out[at] = arg
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = bytes([arg])
        elif op == "delete":
            del out[at : at + arg]
    return bytes(out)


def _corpus_signature(kind: str) -> str:
    return {
        "commit": COMMIT_TYPE,
        "dirtree": DIRTREE_TYPE,
        "dirmeta": DIRMETA_TYPE,
        "commitmeta": METADATA_TYPE,
        "summary": SUMMARY_TYPE,
        "filez": ARCHIVE_HEADER_TYPE,
    }[kind]


@pytest.fixture(scope="module")
def fuzz_corpus(ostree_objects: OstreeObjects, glib_repo: Path) -> list[tuple[str, bytes]]:
    """Small real objects to mutate: (kind, bytes); .filez objects whole."""
    corpus = [(kind, data) for kind, _, data in ostree_objects.objects if len(data) <= 8192]
    exotic = glib_commit(glib_repo, [(key, sig, text) for key, sig, text, _, _ in GLIB_CASES[:30]])
    corpus.append(("commit", exotic))
    return sorted(corpus)


def check_filez(data: bytes) -> None:
    try:
        content.checksum_filez(io.BytesIO(data), "fuzzed.filez")
    except CorruptObject as e:
        assert e.name == "fuzzed.filez"


@requires_ostree
@given(st.data(), mutations)
@fuzz_settings(1500)
def test_fuzz_mutated_ostree_objects(
    fuzz_corpus: list[tuple[str, bytes]], data: st.DataObject, ops: list[tuple[str, int, int]]
) -> None:
    kind, original = data.draw(st.sampled_from(fuzz_corpus))
    mutated = mutate(original, ops)
    if kind == "filez":
        check_filez(mutated)
        mutated = read_frame(mutated)
    check_decodes_or_refuses(_corpus_signature(kind), mutated)
    check_all(mutated)


@given(typed_values(), mutations)
@fuzz_settings(1500)
def test_fuzz_mutated_generated_values(typed: tuple[str, Any], ops: list[tuple[str, int, int]]) -> None:
    signature, value = typed
    check_decodes_or_refuses(signature, mutate(gvariant.encode(signature, value), ops))


def _big_mutants(data: bytes) -> Iterator[bytes]:
    rng = random.Random(len(data))
    for back in range(1, 33):
        for xor in (0x01, 0x80, 0xFF):
            mutant = bytearray(data)
            mutant[-back] ^= xor
            yield bytes(mutant)
    for _ in range(48):
        mutant = bytearray(data)
        mutant[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        yield bytes(mutant)
    for cut in (1, 2, 4, 8, len(data) // 2, len(data) - 1):
        yield data[:-cut]


@requires_ostree
def test_mutated_big_objects(ostree_objects: OstreeObjects, glib_repo: Path) -> None:
    """Objects with 2- and 4-byte framing offsets, mutated where the offsets are and elsewhere."""
    big = [(k, d) for k, _, d in ostree_objects.objects if k != "filez" and len(d) > 255]
    big.append(("commit", glib_commit(glib_repo, [(k, s, t) for k, s, t, _, _ in GLIB_BIG_CASES])))
    assert any(len(d) > 65535 for _, d in big)
    for kind, data in big:
        for mutant in _big_mutants(data):
            check_decodes_or_refuses(_corpus_signature(kind), mutant)
            check_objects_or_corrupt(mutant)
