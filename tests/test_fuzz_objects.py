"""Fuzz every OSTree object kind through the parsers a peer's bytes reach.

tests/test_gvariant.py fuzzes the codec with arbitrary bytes and mutates real objects made by
``ostree``.  Here hypothesis *builds* valid commit, dirtree, dirmeta, commitmeta, summary and
``.filez`` objects of every shape (metadata of nested variants, many entries, symlinks, xattrs,
big and empty files), mutates them where the framing offsets live and elsewhere, and feeds each
to its parser.  For every input:

- the parser returns or raises :class:`CorruptObject` naming the object, nothing else;
- it finishes (a SIGALRM guard turns a hang into a failure, far above any normal time);
- tracemalloc's peak stays under ``ALLOC_PER_BYTE`` bytes per input byte plus a constant.

CI runs a seeded few thousand inputs; ``LANSHARE_FUZZ_EXAMPLES=N`` runs N fresh random inputs per
test (6 tests: N=17000 tries 102,000 inputs)::

    LANSHARE_FUZZ_EXAMPLES=17000 python -m pytest -s tests/test_fuzz_objects.py -k mutated

(``-s`` shows how many inputs each test checked.)
"""

from __future__ import annotations

import io
import os
import signal
import stat
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanshare import gvariant
from lanshare.errors import CorruptObject
from lanshare.gvariant import Variant
from lanshare.ostree import content
from lanshare.ostree.content import FileHeader
from lanshare.ostree.objects import Commit, DirMeta, DirTree, encode_metadata, parse_metadata
from lanshare.ostree.summary import SummaryRef, build_summary, parse_summary
from tests.test_gvariant import mutate, mutations

_OVERRIDE = int(os.environ.get("LANSHARE_FUZZ_EXAMPLES", "0") or 0)
# Python objects cost more than the bytes they came from; an a(y) costs ~56 B per byte.
ALLOC_PER_BYTE = 64
ALLOC_CONSTANT = 1 << 20
HANG_SECONDS = 20


def fuzz(ci_examples: int) -> settings:
    """A seeded CI-sized run, or LANSHARE_FUZZ_EXAMPLES fresh random examples when set."""
    return settings(
        max_examples=_OVERRIDE or ci_examples,
        derandomize=not _OVERRIDE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- valid objects of every shape ------------------------------------------------------------------

checksums = st.binary(min_size=32, max_size=32).map(bytes.hex)
names = st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..")
)
leaf_variants = st.one_of(
    st.booleans().map(lambda v: Variant("b", v)),
    st.integers(0, 255).map(lambda v: Variant("y", v)),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: Variant("i", v)),
    st.integers(0, 2**64 - 1).map(lambda v: Variant("t", v)),
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=20).map(
        lambda v: Variant("s", v)
    ),
    st.binary(max_size=64).map(lambda v: Variant("ay", v)),
    st.lists(st.text(max_size=5).filter(lambda s: "\0" not in s), max_size=5).map(lambda v: Variant("as", v)),
    st.lists(st.tuples(st.integers(0, 255)), max_size=40).map(lambda v: Variant("a(y)", v)),
)
variants = st.recursive(
    leaf_variants,
    lambda inner: st.one_of(
        inner.map(lambda v: Variant("v", v)),
        st.dictionaries(st.text(max_size=6).filter(lambda s: "\0" not in s), inner, max_size=4).map(
            lambda v: Variant("a{sv}", v)
        ),
    ),
    max_leaves=8,
)
metadata = st.dictionaries(st.text(max_size=24).filter(lambda s: "\0" not in s), variants, max_size=6)


@st.composite
def commits(draw: st.DrawFn) -> bytes:
    return Commit(
        root_tree=draw(checksums),
        root_meta=draw(checksums),
        timestamp=draw(st.integers(0, 2**63 - 1)),
        parent=draw(st.none() | checksums),
        subject=draw(st.text(max_size=40).filter(lambda s: "\0" not in s)),
        body=draw(st.text(max_size=80).filter(lambda s: "\0" not in s)),
        metadata=draw(metadata),
        related=[(r, bytes.fromhex(c)) for r, c in draw(st.lists(st.tuples(names, checksums), max_size=3))],
    ).to_bytes()


@st.composite
def dirtrees(draw: st.DrawFn) -> bytes:
    entry_names = draw(st.lists(names, unique=True, max_size=30))
    split = draw(st.integers(0, len(entry_names)))
    files = [(n, draw(checksums)) for n in entry_names[:split]]
    dirs = [(n, draw(checksums), draw(checksums)) for n in entry_names[split:]]
    return DirTree(files, dirs).to_bytes()


xattrs = st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=40)), max_size=4)


@st.composite
def dirmetas(draw: st.DrawFn) -> bytes:
    mode = stat.S_IFDIR | draw(st.integers(0, 0o7777))
    return DirMeta(
        draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)), mode, draw(xattrs)
    ).to_bytes()


@st.composite
def commitmetas(draw: st.DrawFn) -> bytes:
    meta = draw(metadata)
    if draw(st.booleans()):
        meta["ostree.gpgsigs"] = Variant("aay", draw(st.lists(st.binary(max_size=300), max_size=3)))
    if draw(st.booleans()):
        meta["ostree.sign.ed25519"] = Variant(
            "aay", draw(st.lists(st.binary(min_size=64, max_size=64), max_size=2))
        )
    return encode_metadata(meta)


refs = st.builds(
    SummaryRef,
    name=st.from_regex(r"[a-z][a-z0-9]{0,6}(/[a-z0-9]{1,6}){0,2}", fullmatch=True),
    checksum=checksums,
    commit_size=st.integers(0, 2**32),
    timestamp=st.none() | st.integers(0, 2**40),
    version=st.none() | st.text(max_size=8).filter(lambda s: "\0" not in s),
)


@st.composite
def summaries(draw: st.DrawFn) -> bytes:
    unique = {r.name: r for r in draw(st.lists(refs, max_size=12))}
    collection = draw(st.none() | st.just("org.example.Os"))
    other = {r.name: r for r in draw(st.lists(refs, max_size=4))}
    return build_summary(
        list(unique.values()),
        last_modified=draw(st.integers(0, 2**40)),
        collection_id=collection,
        collection_map={"org.example.Other": list(other.values())} if other else None,
        static_deltas={
            f"{draw(checksums)}": bytes.fromhex(draw(checksums)) for _ in range(draw(st.integers(0, 2)))
        },
    )


@st.composite
def filez(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["file", "symlink", "empty", "zeros"]))
    data = b""
    target = ""
    if kind == "file":
        data = draw(st.binary(max_size=3000))
    elif kind == "zeros":
        data = bytes(draw(st.integers(1, 200_000)))  # compresses ~1000:1
    if kind == "symlink":
        target = draw(st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s))
        mode = stat.S_IFLNK | 0o777
    else:
        mode = stat.S_IFREG | draw(st.integers(0, 0o7777))
    header = FileHeader(0, 0, mode, target, draw(xattrs), size=len(data))
    return b"".join(content.compress_chunks(header, iter([data])))


# --- the parsers, and the bounds every input must respect ------------------------------------------


def _parse_filez(data: bytes) -> Any:
    return content.checksum_filez(io.BytesIO(data), "fuzzed.filez")


PARSERS: dict[str, Callable[[bytes], Any]] = {
    "commit": lambda d: Commit.from_bytes(d, "fuzzed.commit"),
    "dirtree": lambda d: DirTree.from_bytes(d, "fuzzed.dirtree"),
    "dirmeta": lambda d: DirMeta.from_bytes(d, "fuzzed.dirmeta"),
    "commitmeta": lambda d: parse_metadata(d, "fuzzed.commitmeta"),
    "summary": parse_summary,
    "filez": _parse_filez,
}


def _hang(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError(f"parser still running after {HANG_SECONDS} s: a hang")


@contextmanager
def _hang_guard() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


CHECKED: dict[str, int] = {}  # inputs checked per kind (printed: run with -s to see them)


def check_bounded(kind: str, data: bytes) -> None:
    """Parse ``data`` as ``kind``: CorruptObject or a result, in bounded time and memory."""
    CHECKED[kind] = CHECKED.get(kind, 0) + 1
    tracemalloc.start()
    try:
        with _hang_guard():
            try:
                PARSERS[kind](data)
            except CorruptObject as e:
                assert e.name.startswith("fuzzed") or kind == "summary", e
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # .filez data is inflated a chunk at a time: its bound does not grow with the declared size.
    assert peak <= ALLOC_PER_BYTE * len(data) + ALLOC_CONSTANT, (kind, len(data), peak)


GENERATORS: dict[str, st.SearchStrategy[bytes]] = {
    "commit": commits(),
    "dirtree": dirtrees(),
    "dirmeta": dirmetas(),
    "commitmeta": commitmetas(),
    "summary": summaries(),
    "filez": filez(),
}


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_generated_objects_parse(kind: str) -> None:
    """The generators make valid objects (so the mutations below start from real shapes)."""

    @given(GENERATORS[kind])
    @settings(max_examples=40, derandomize=True, database=None, deadline=None)
    def valid(data: bytes) -> None:
        PARSERS[kind](data)

    valid()


# Seeded CI counts (2,250 inputs); summaries are the slowest to build, so fewer of them.
CI_EXAMPLES = {"commit": 400, "dirtree": 400, "dirmeta": 400, "commitmeta": 400, "summary": 150, "filez": 500}


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_fuzz_mutated_objects(kind: str) -> None:
    @given(GENERATORS[kind], mutations)
    @fuzz(CI_EXAMPLES[kind])
    def mutated(data: bytes, ops: list[tuple[str, int, int]]) -> None:
        check_bounded(kind, mutate(data, ops))

    before = CHECKED.get(kind, 0)
    mutated()
    print(f"\n{kind}: {CHECKED.get(kind, 0) - before} mutated inputs checked")


# --- targeted: inputs a fuzzer rarely stumbles on ---------------------------------------------------


def test_dense_arrays_cost_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the element budget, an array is refused before it becomes that many Python objects.

    The budget is lowered here so the test stays fast; at the real MAX_VALUES (1,000,000) an a(y)
    costs at most ~56 MB, where a 16 MiB commitmeta of them would otherwise cost ~900 MB.
    """
    monkeypatch.setattr(gvariant, "MAX_VALUES", 10_000)
    for signature, value in (("a(y)", [(1,)] * 10_001), ("ab", [True] * 10_001), ("as", ["x"] * 10_001)):
        data = encode_metadata({"k": Variant(signature, value)})
        tracemalloc.start()
        try:
            with pytest.raises(CorruptObject, match="array elements"):
                parse_metadata(data, "fuzzed.commitmeta")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024, (signature, peak)
    # Elements are counted across the whole value, not per array.
    nested = encode_metadata({str(i): Variant("a(y)", [(1,)] * 2_000) for i in range(6)})
    with pytest.raises(CorruptObject, match="array elements"):
        parse_metadata(nested, "fuzzed.commitmeta")
    # Within the budget it parses, within the per-byte bound.
    check_bounded("commitmeta", encode_metadata({"k": Variant("a(y)", [(1,)] * 9_000)}))


def test_filez_bombs_are_streamed_and_checked_against_the_declared_size() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = bomb.compress(bytes(50_000_000)) + bomb.flush()  # ~50 KB of input, 50 MB inflated
    for declared in (50_000_000, 10, 2**63):
        header = FileHeader(0, 0, stat.S_IFREG | 0o644, size=declared)
        data = header.archive_prefix() + deflated
        check_bounded("filez", data)
        if declared != 50_000_000:
            with pytest.raises(CorruptObject):
                _parse_filez(data)


def test_big_file_headers_are_not_kept_across_objects() -> None:
    """Headers are cached across objects (they repeat); a peer's huge distinct ones must not pile up."""
    tracemalloc.start()
    try:
        for n in range(40):
            header = FileHeader(0, 0, stat.S_IFREG | 0o644, xattrs=[(b"user.pad", bytes([n]) * 100_000)])
            _parse_filez(b"".join(content.compress_chunks(header, iter([b""]))))
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained < ALLOC_CONSTANT, retained
