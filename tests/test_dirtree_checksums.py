"""The fast dirtree reader prune walks with names the same checksums as the full parser, or refuses."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanshare import gvariant
from lanshare.errors import CorruptObject
from lanshare.gvariant import GVariantError
from lanshare.ostree.objects import (
    DIRTREE_TYPE,
    DirTree,
    ObjectType,
    checksum_from_bytes,
    dirtree_checksums,
    validate_filename,
)
from lanshare.ostree.repo import Repo
from tests.conftest import build_tree, ostree_commit

checksums = st.binary(min_size=32, max_size=32).map(bytes.hex)
# Long names push entries, arrays and the whole tree across the 1-, 2- and 4-byte offset widths.
names = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="/\0"), min_size=1, max_size=300
).filter(lambda n: n not in (".", ".."))


@st.composite
def dirtrees(draw: st.DrawFn) -> DirTree:
    entries = draw(st.lists(names, unique=True, max_size=40))
    split = draw(st.integers(0, len(entries)))
    files = [(name, draw(checksums)) for name in entries[:split]]
    dirs = [(name, draw(checksums), draw(checksums)) for name in entries[split:]]
    return DirTree(sorted(files, key=lambda f: f[0].encode()), sorted(dirs, key=lambda d: d[0].encode()))


def _expected(tree: DirTree) -> tuple[list[str], list[tuple[str, str]]]:
    return [c for _, c in tree.files], [(t, m) for _, t, m in tree.dirs]


@settings(max_examples=300, deadline=None)
@given(dirtrees())
def test_it_reads_every_serialized_tree_as_the_full_parser_does(tree: DirTree) -> None:
    data = tree.to_bytes()
    assert dirtree_checksums(data) == _expected(DirTree.from_bytes(data)) == _expected(tree)


@settings(max_examples=500, deadline=None)
@given(dirtrees(), st.data())
def test_damaged_bytes_are_refused_or_read_as_the_full_parser_reads_them(
    tree: DirTree, data: st.DataObject
) -> None:
    raw = bytearray(tree.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        if raw and data.draw(st.booleans()):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        else:
            del raw[data.draw(st.integers(0, len(raw))) :]
    try:
        fast = dirtree_checksums(bytes(raw))
    except CorruptObject:
        return  # refused with the error every reader of a repository handles
    try:
        full = DirTree.from_bytes(bytes(raw))
    except CorruptObject:
        return  # the full parser also checks names and order; the fast one only the framing
    assert fast == _expected(full)


def test_it_reads_the_trees_ostree_commit_wrote(ostree_repo: Path, tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "tree", seed=3)
    rng = random.Random(3)
    big = tree / "usr" / "share" / "many"
    big.mkdir(parents=True)
    for i in range(400):  # a dirtree over 64 KiB: 4-byte framing offsets
        (big / f"{'x' * rng.randint(100, 200)}-{i}").write_bytes(rng.randbytes(8))
    ostree_commit(ostree_repo, "os/stable", tree)
    repo = Repo.open(ostree_repo)
    trees = [c for c, kind, _ in repo.iter_objects() if kind is ObjectType.DIR_TREE]
    assert len(trees) > 3
    sizes = set()
    for checksum in trees:
        data = repo.read_metadata_bytes(checksum, ObjectType.DIR_TREE)
        sizes.add(len(data))
        assert dirtree_checksums(data) == _expected(DirTree.from_bytes(data))
    assert max(sizes) > 0xFFFF


def _or_refused(read: Callable[[], object]) -> object:
    try:
        return read()
    except CorruptObject:
        return "refused"


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff", b"\x01\x01", b"\x05\x00\x00\x00\x00\x00\x00\x05"])
def test_tiny_inputs_are_refused_or_agree_with_the_full_parser(data: bytes) -> None:
    full = _or_refused(lambda: _expected(DirTree.from_bytes(data)))
    fast = _or_refused(lambda: dirtree_checksums(data))
    assert fast == full or full == "refused"


def _generic_parse(data: bytes) -> object:
    """The dirtree as the generic GVariant decoder reads it, with DirTree.from_bytes's own checks:
    the oracle the dirtree's framing reader is held to ("refused" when either step refuses)."""
    try:
        raw_files, raw_dirs = gvariant.decode(DIRTREE_TYPE, data)
        files = [(validate_filename(n, "x"), checksum_from_bytes(c, "x")) for n, c in raw_files]
        dirs = [
            (validate_filename(n, "x"), checksum_from_bytes(t, "x"), checksum_from_bytes(m, "x"))
            for n, t, m in raw_dirs
        ]
    except (GVariantError, CorruptObject):
        return "refused"
    for names in ([n for n, _ in files], [n for n, _, _ in dirs]):
        encoded = [n.encode() for n in names]
        if any(a >= b for a, b in itertools.pairwise(encoded)):
            return "refused"
    if {n for n, _ in files} & {n for n, _, _ in dirs}:
        return "refused"
    return DirTree(files, dirs)


@settings(max_examples=500, deadline=None)
@given(dirtrees(), st.data())
def test_the_full_parser_accepts_exactly_what_the_generic_decoder_accepts(
    tree: DirTree, data: st.DataObject
) -> None:
    """Storing a dirtree parses it (DirTree.from_bytes, on the dirtree's own framing reader): intact
    or damaged, it must be refused, or read, exactly as the generic GVariant decoder would."""
    raw = bytearray(tree.to_bytes())
    assert _or_refused(lambda: DirTree.from_bytes(bytes(raw))) == _generic_parse(bytes(raw)) == tree
    for _ in range(data.draw(st.integers(1, 4))):
        choice = data.draw(st.integers(0, 2))
        if raw and choice == 0:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        elif raw and choice == 1:  # a name byte made NUL, non-UTF-8, or '/'
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.sampled_from([0, 0x2F, 0xC3, 0xFF]))
        else:
            del raw[data.draw(st.integers(0, len(raw))) :]
    assert _or_refused(lambda: DirTree.from_bytes(bytes(raw))) == _generic_parse(bytes(raw))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\xff",
        b"\x01\x01",
        b"\x05\x00\x00\x00\x00\x00\x00\x05",
        b"a\x00" + bytes(32) + b"\x02\x23\x00",
    ],
)
def test_tiny_inputs_are_read_by_the_full_parser_as_by_the_generic_decoder(data: bytes) -> None:
    assert _or_refused(lambda: DirTree.from_bytes(data)) == _generic_parse(data)
