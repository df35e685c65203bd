"""Hostile and corrupt input: a clear error naming the object, never a traceback, nothing visible.

Every case here feeds lanshare something broken (a flipped byte in a stored object, truncated or
lying metadata, a deflate bomb, a bad ref name) and checks three things: the error is one of
lanshare's own (CorruptObject, RepoError…) and names the object or ref; the CLI exits non-zero
with a message, not a traceback; and nothing invalid became visible in the repository (no object
file, no ref, no leftover in ``tmp/``).  The ``ostree`` CLI is the oracle for what is corrupt.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import resource
import shutil
import subprocess
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from lanshare import gvariant
from lanshare.cli import main as lanshare_main
from lanshare.errors import CorruptObject, MissingObject
from lanshare.ostree import content, signing
from lanshare.ostree.content import FileHeader
from lanshare.ostree.objects import (
    COMMIT_TYPE,
    DIRTREE_TYPE,
    Commit,
    DirMeta,
    DirTree,
    ObjectType,
)
from lanshare.ostree.repo import Repo, RepoError
from tests.conftest import build_tree, ostree, requires_ostree

MiB = 1 << 20
GiB = 1 << 30
TIMESTAMP = 1_700_000_000


# --- helpers ------------------------------------------------------------------------------------------


def files_under(path: Path) -> set[str]:
    """Every file and directory below ``path``, relative (to compare before and after)."""
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


def assert_tmp_clean(repo: Repo) -> None:
    leftovers = sorted(p.name for p in repo.tmp_dir.iterdir())
    assert leftovers == [], f"tmp/ holds leftovers: {leftovers}"


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def empty_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty configuration file, so that no machine-wide /etc/lanshare setting leaks in."""
    path = tmp_path_factory.mktemp("config") / "lanshare.toml"
    path.write_text("")
    return path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], empty_config: Path) -> Cli:
    """Run ``lanshare COMMAND --config EMPTY ARGS…`` in-process: (exit status, stdout, stderr).

    Any exception escaping ``main()`` fails the test: the CLI must turn every error into a message.
    """

    def run(command: str, *args: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = lanshare_main([command, "--config", str(empty_config), *map(str, args)])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return rc, out, err

    return run


def ostree_fsck(repo: Path) -> subprocess.CompletedProcess[str]:
    return ostree("fsck", f"--repo={repo}", check=False)


def objects_of(repo: Repo, kind: ObjectType) -> list[tuple[str, Path]]:
    """Objects of one kind, largest first (then by name, so the choice is deterministic)."""
    found = [(checksum, path) for checksum, k, path in repo.iter_objects() if k is kind]
    return sorted(found, key=lambda item: (-item[1].stat().st_size, item[0]))


def flip_byte(path: Path, where: str) -> int:
    data = bytearray(path.read_bytes())
    position = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[position] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return position


@pytest.fixture(scope="module")
def ed25519_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A fresh ed25519 key pair: (public key in base64, secret key file)."""
    public, secret = signing.generate_ed25519_keypair()
    path = tmp_path_factory.mktemp("keys") / "secret.ed25519"
    path.write_text(secret + "\n")
    return public, path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, ed25519_key: tuple[str, Path]) -> Path:
    """A signed repository made by ``lanshare commit`` from the shared test tree (copy it to change it)."""
    base = tmp_path_factory.mktemp("pristine")
    tree = build_tree(base / "tree")
    rc = lanshare_main(
        ["commit", "--repo", str(base / "repo"), "--branch", "os/stable", "--tree", str(tree),
         "--timestamp", str(TIMESTAMP), "--subject", "pristine", "--sign-ed25519", str(ed25519_key[1])]
    )  # fmt: skip
    assert rc == 0
    assert len(list((base / "repo" / "objects").glob("*/*.commitmeta"))) == 1
    return base / "repo"


@pytest.fixture
def repo_copy(pristine: Path, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    shutil.copytree(pristine, path)
    return path


@pytest.fixture
def empty_repo(tmp_path: Path) -> Repo:
    return Repo.init(tmp_path / "empty-repo")


# --- a flipped byte in a stored object ----------------------------------------------------------------


@requires_ostree
def test_pristine_repo_passes_both_fscks(repo_copy: Path, cli: Cli, ed25519_key: tuple[str, Path]) -> None:
    rc, out, _ = cli("fsck", "--repo", repo_copy, "--json", "--ed25519-key", ed25519_key[0])
    assert rc == 0 and json.loads(out)["ok"] is True
    assert json.loads(out)["commits_checked"] == 1
    assert ostree_fsck(repo_copy).returncode == 0


@requires_ostree
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize(
    "kind", [ObjectType.COMMIT, ObjectType.DIR_TREE, ObjectType.DIR_META, ObjectType.FILE]
)
def test_flipped_byte_is_named_by_fsck(
    repo_copy: Path,
    cli: Cli,
    ed25519_key: tuple[str, Path],
    kind: ObjectType,
    where: str,
) -> None:
    checksum, path = objects_of(Repo.open(repo_copy), kind)[0]
    flip_byte(path, where)
    name = f"{checksum}.{kind.value}"

    rc, out, _ = cli("fsck", "--repo", repo_copy, "--json", "--ed25519-key", ed25519_key[0])
    assert rc == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert {"object", "kind", "message"} <= set(report["problems"][0])
    named = [p for p in report["problems"] if p["object"] == name]
    assert named and named[0]["kind"] == "corrupt" and named[0]["message"]
    assert all("\n" not in p["message"] for p in report["problems"])

    rc, out, _ = cli("fsck", "--repo", repo_copy)
    assert rc == 1
    assert f"corrupt: {name}: " in out

    oracle = ostree_fsck(repo_copy)
    assert oracle.returncode != 0
    assert checksum in oracle.stderr


@requires_ostree
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_commitmeta(
    repo_copy: Path, cli: Cli, ed25519_key: tuple[str, Path], where: str
) -> None:
    """Detached metadata is named after its commit and has no checksum of its own.

    A flip in its structure (the key name, the framing offsets) makes it unparseable: fsck names the
    ``.commitmeta`` as corrupt, and GLib cannot read the signature either.  A flip inside the
    signature bytes still parses: only verification against a trusted key finds it, and then the
    problem is the commit's signature.  (``ostree fsck`` never reads detached metadata, and Debian's
    ostree is built without ed25519, so ``ostree show`` is the oracle here.)
    """
    repo = Repo.open(repo_copy)
    commit = repo.resolve_rev("os/stable")
    flip_byte(repo.object_path(commit, ObjectType.COMMIT_META), where)
    rc, out, _ = cli("fsck", "--repo", repo_copy, "--json", "--ed25519-key", ed25519_key[0])
    assert rc == 1
    problems = {(p["object"], p["kind"]): p["message"] for p in json.loads(out)["problems"]}
    oracle = ostree(
        "show",
        f"--repo={repo_copy}",
        "--print-detached-metadata-key=ostree.sign.ed25519",
        commit,
        check=False,
    )
    if where == "middle":
        assert set(problems) == {(f"{commit}.commit", "signature")}
        assert "signature" in problems[(f"{commit}.commit", "signature")]
        assert oracle.returncode == 0  # GLib reads it; the bytes are simply not a valid signature
        rc, out, _ = cli("fsck", "--repo", repo_copy)
        assert rc == 0  # without a trusted key nothing can tell
    else:
        assert (f"{commit}.commitmeta", "corrupt") in problems
        assert oracle.returncode != 0
        rc, out, _ = cli("fsck", "--repo", repo_copy)
        assert rc == 1 and f"corrupt: {commit}.commitmeta: " in out
        with pytest.raises(CorruptObject) as info:
            repo.load_commitmeta(commit)
        assert info.value.name == f"{commit}.commitmeta"


def test_missing_objects_are_named_by_fsck(repo_copy: Path, cli: Cli) -> None:
    repo = Repo.open(repo_copy)
    checksum, path = objects_of(repo, ObjectType.FILE)[0]
    path.unlink()
    rc, out, _ = cli("fsck", "--repo", repo_copy, "--json")
    assert rc == 1
    problems = json.loads(out)["problems"]
    assert {"object": f"{checksum}.filez", "kind": "missing"}.items() <= problems[0].items()
    with pytest.raises(MissingObject, match=checksum):
        repo.verify_content(checksum)


# --- write_metadata with lying bytes ------------------------------------------------------------------


def pristine_object(pristine: Path, kind: ObjectType, index: int = 0) -> tuple[str, bytes]:
    checksum, path = objects_of(Repo.open(pristine), kind)[index]
    return checksum, path.read_bytes()


def assert_refused(repo: Repo, kind: ObjectType, data: bytes, expected: str | None, name: str) -> None:
    """write_metadata raises CorruptObject naming ``name``; nothing is stored, tmp/ stays clean."""
    before = files_under(repo.path)
    with pytest.raises(CorruptObject) as info:
        repo.write_metadata(kind, data, expected)
    assert info.value.name == name
    assert str(info.value).startswith(name + ": ") and "\n" not in str(info.value)
    assert not repo.has_object(hashlib.sha256(data).hexdigest(), kind)
    if expected is not None:
        assert not repo.has_object(expected, kind)
    assert files_under(repo.path) == before
    assert_tmp_clean(repo)


@pytest.mark.parametrize("kind", [ObjectType.COMMIT, ObjectType.DIR_TREE, ObjectType.DIR_META])
@pytest.mark.parametrize("cut", [1, 2, 8, "half"])
def test_write_metadata_truncated(pristine: Path, empty_repo: Repo, kind: ObjectType, cut: int | str) -> None:
    checksum, data = pristine_object(pristine, kind)
    truncated = data[: len(data) // 2] if cut == "half" else data[: -int(cut)]
    actual = hashlib.sha256(truncated).hexdigest()
    # announced under its real name: the checksum check fails first
    assert_refused(empty_repo, kind, truncated, checksum, f"{checksum}.{kind.value}")
    # announced under the checksum of the truncated bytes: it must not parse
    assert_refused(empty_repo, kind, truncated, actual, f"{actual}.{kind.value}")
    assert_refused(empty_repo, kind, truncated, None, f"{actual}.{kind.value}")


@pytest.mark.parametrize("kind", [ObjectType.COMMIT, ObjectType.DIR_TREE])
def test_write_metadata_framing_offset_outside_the_buffer(
    pristine: Path, empty_repo: Repo, kind: ObjectType
) -> None:
    _, data = pristine_object(pristine, kind)
    width = 1 if len(data) <= 0xFF else 2 if len(data) <= 0xFFFF else 4
    bad = data[:-width] + b"\xff" * width  # the last framing offset now points past the end
    actual = hashlib.sha256(bad).hexdigest()
    assert_refused(empty_repo, kind, bad, actual, f"{actual}.{kind.value}")
    assert_refused(empty_repo, kind, bad, None, f"{actual}.{kind.value}")


def test_write_metadata_two_byte_framing_offset_outside(pristine: Path, empty_repo: Repo) -> None:
    _, data = pristine_object(pristine, ObjectType.DIR_TREE)  # the largest dirtree: root, > 255 bytes
    assert 0xFF < len(data) <= 0xFFFF
    bad = data[:-2] + (len(data) + 1).to_bytes(2, "little")
    actual = hashlib.sha256(bad).hexdigest()
    assert_refused(empty_repo, ObjectType.DIR_TREE, bad, None, f"{actual}.dirtree")


@pytest.mark.parametrize("kind", [ObjectType.COMMIT, ObjectType.DIR_TREE, ObjectType.DIR_META])
def test_write_metadata_wrong_checksum(pristine: Path, empty_repo: Repo, kind: ObjectType) -> None:
    checksum, data = pristine_object(pristine, kind)
    wrong = hashlib.sha256(b"something else").hexdigest()
    assert_refused(empty_repo, kind, data, wrong, f"{wrong}.{kind.value}")
    # the right checksum is accepted, and the object then exists
    assert empty_repo.write_metadata(kind, data, checksum) == checksum
    assert empty_repo.has_object(checksum, kind)
    assert_tmp_clean(empty_repo)


def test_write_metadata_garbage(empty_repo: Repo) -> None:
    for kind, data in itertools.product(
        [ObjectType.COMMIT, ObjectType.DIR_TREE, ObjectType.DIR_META, ObjectType.COMMIT_META],
        [b"", b"\xff", b"\x00" * 7, b"\xff" * 300, bytes(range(256)) * 3],
    ):
        if kind is ObjectType.DIR_TREE and data == b"":
            continue  # zero bytes are a well-formed empty dirtree (GVariant reads them as ([], []))
        if kind is ObjectType.COMMIT_META and data in (b"", b"\x00" * 7):
            continue  # an empty a{sv} and a degenerate but valid one
        actual = hashlib.sha256(data).hexdigest()
        assert_refused(empty_repo, kind, data, None, f"{actual}.{kind.value}")


# --- dirtrees and commits whose fields lie ------------------------------------------------------------

CHECKSUM = bytes(range(32))


def raw_dirtree(files: list[tuple[str, bytes]], dirs: list[tuple[str, bytes, bytes]]) -> bytes:
    return gvariant.encode(DIRTREE_TYPE, (files, dirs))


BAD_DIRTREES = {
    "file named ..": raw_dirtree([("..", CHECKSUM)], []),
    "file named .": raw_dirtree([(".", CHECKSUM)], []),
    "file with a slash": raw_dirtree([("a/b", CHECKSUM)], []),
    "file with a leading slash": raw_dirtree([("/etc", CHECKSUM)], []),
    "file with an empty name": raw_dirtree([("", CHECKSUM)], []),
    "directory named ..": raw_dirtree([], [("..", CHECKSUM, CHECKSUM)]),
    "directory with a slash": raw_dirtree([], [("../../etc", CHECKSUM, CHECKSUM)]),
    "file name with NUL": raw_dirtree([("ab", CHECKSUM)], []).replace(b"ab\0", b"a\0\0", 1),
    "short checksum": raw_dirtree([("a", CHECKSUM[:31])], []),
    "long checksum": raw_dirtree([("a", CHECKSUM + b"\0")], []),
    "unsorted": raw_dirtree([("b", CHECKSUM), ("a", CHECKSUM)], []),
    "duplicate": raw_dirtree([("a", CHECKSUM), ("a", CHECKSUM)], []),
    "file and directory": raw_dirtree([("a", CHECKSUM)], [("a", CHECKSUM, CHECKSUM)]),
    "invalid UTF-8": raw_dirtree([("ab", CHECKSUM)], []).replace(b"ab\0", b"\xff\xfe\0", 1),
}


@pytest.mark.parametrize("case", sorted(BAD_DIRTREES))
def test_dirtree_with_unsafe_entries(empty_repo: Repo, case: str) -> None:
    data = BAD_DIRTREES[case]
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(CorruptObject) as info:
        DirTree.from_bytes(data, "the-tree")
    assert info.value.name == "the-tree"
    assert_refused(empty_repo, ObjectType.DIR_TREE, data, actual, f"{actual}.dirtree")


def test_commit_and_dirmeta_with_lying_fields(empty_repo: Repo) -> None:
    good = Commit(root_tree=CHECKSUM.hex(), root_meta=CHECKSUM.hex(), timestamp=TIMESTAMP)
    fields = list(gvariant.decode(COMMIT_TYPE, good.to_bytes()))
    cases = []
    for index, value in [(6, CHECKSUM[:31]), (7, b""), (1, b"\x01" * 5)]:  # root tree, root meta, parent
        broken = list(fields)
        broken[index] = value
        cases.append((ObjectType.COMMIT, gvariant.encode(COMMIT_TYPE, tuple(broken))))
    cases.append((ObjectType.DIR_META, DirMeta(0, 0, 0o100644).to_bytes()))  # a file's mode
    cases.append((ObjectType.DIR_META, DirMeta(0, 0, 0).to_bytes()))
    for kind, data in cases:
        actual = hashlib.sha256(data).hexdigest()
        assert_refused(empty_repo, kind, data, None, f"{actual}.{kind.value}")


# --- .filez that lie about their size ----------------------------------------------------------------

REGULAR = FileHeader(uid=0, gid=0, mode=0o100644)
SOME_CHECKSUM = "5a" * 32


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def filez(declared: int, payload: bytes, header: FileHeader = REGULAR) -> bytes:
    h = FileHeader(header.uid, header.gid, header.mode, header.symlink_target, header.xattrs, size=declared)
    return h.archive_prefix() + payload


def assert_filez_refused(
    repo: Repo, expected: str, stream: io.RawIOBase | io.BufferedIOBase, match: str
) -> None:
    before = files_under(repo.path)
    with pytest.raises(CorruptObject, match=match) as info:
        repo.write_filez(expected, stream)  # type: ignore[arg-type]
    assert info.value.name == f"{expected}.filez"
    assert "\n" not in str(info.value)
    assert not repo.has_object(expected, ObjectType.FILE)
    assert files_under(repo.path) == before
    assert_tmp_clean(repo)


FILEZ_CASES = {
    "empty stream": (b"", "truncated before the file header"),
    "header length 0xFFFFFFF0": (b"\xff\xff\xff\xf0\0\0\0\0" + bytes(64), "file header claims"),
    "header cut short": (REGULAR.archive_prefix()[:20], "truncated inside the file header"),
    "header not a GVariant": (b"\0\0\0\x05\0\0\0\0\xff\xff\xff\xff\xff", "malformed archive file header"),
    "declared size 0xFFFFFFF0": (filez(0xFFFFFFF0, deflate(b"tiny")), "shorter than its declared size"),
    "declared size 2**64-1": (filez(2**64 - 1, deflate(b"tiny")), "shorter than its declared size"),
    "10 declared, 1 MiB inside": (filez(10, deflate(bytes(MiB))), "inflates past its declared size"),
    "1000 declared, 10 inside": (filez(1000, deflate(b"0123456789")), "shorter than its declared size"),
    "deflate stream cut": (filez(100_000, deflate(bytes(range(256)) * 400)[:200]), "truncated"),
    "not deflate": (filez(10, b"\xff" * 32), "corrupt"),
    "trailing bytes": (filez(4, deflate(b"abcd") + b"extra"), "trailing bytes"),
    "symlink with data": (
        filez(0, b"data", FileHeader(0, 0, 0o120777, symlink_target="target")),
        "symlink",
    ),
    "symlink without target": (filez(0, b"", FileHeader(0, 0, 0o120777)), "symlink"),
    "directory mode": (filez(0, deflate(b""), FileHeader(0, 0, 0o40755)), "neither a regular file"),
    "device mode": (filez(0, deflate(b""), FileHeader(0, 0, 0o20644)), "neither a regular file"),
}


@pytest.mark.parametrize("case", sorted(FILEZ_CASES))
def test_write_filez_refuses(empty_repo: Repo, case: str) -> None:
    data, match = FILEZ_CASES[case]
    assert_filez_refused(empty_repo, SOME_CHECKSUM, io.BytesIO(data), match)


@pytest.mark.parametrize("case", sorted(FILEZ_CASES))
def test_write_filez_bytes_refuses(empty_repo: Repo, case: str) -> None:
    """Objects a pull holds in memory take a one-call way (checksum_filez_bytes): it must refuse
    every lie the streaming way refuses, with the same reason, and write nothing."""
    data, match = FILEZ_CASES[case]
    before = files_under(empty_repo.path)
    with pytest.raises(CorruptObject, match=match) as info:
        empty_repo.write_filez_bytes(SOME_CHECKSUM, data)
    assert info.value.name == f"{SOME_CHECKSUM}.filez"
    assert files_under(empty_repo.path) == before
    assert_tmp_clean(empty_repo)


def test_checksum_filez_bytes_names_objects_like_the_stream() -> None:
    """Both ways name regular files (empty, small, larger than one inflate chunk) and symlinks alike."""
    headers = [REGULAR, FileHeader(0, 0, 0o120777, symlink_target="target")]
    bodies = [b"", b"hello\n", os.urandom(content.CHUNK + 10)]
    for header in headers:
        for body in bodies if not header.is_symlink else [b""]:
            h = FileHeader(header.uid, header.gid, header.mode, header.symlink_target, size=len(body))
            data = h.archive_prefix() + (b"" if header.is_symlink else deflate(body))
            expected = content.content_checksum(h, body)
            assert content.checksum_filez_bytes(data, "x") == expected
            assert content.checksum_filez(io.BytesIO(data), "x")[0] == expected


def test_write_filez_wrong_checksum_and_right_one(empty_repo: Repo) -> None:
    body = b"hello\n" * 1000
    header = FileHeader(0, 0, 0o100644, size=len(body))
    data = header.archive_prefix() + deflate(body)
    right = content.content_checksum(header, body)
    assert_filez_refused(empty_repo, SOME_CHECKSUM, io.BytesIO(data), "checksum mismatch")
    empty_repo.write_filez(right, io.BytesIO(data))
    assert empty_repo.verify_content(right).size == len(body)
    assert_tmp_clean(empty_repo)


class DeflateBomb(io.RawIOBase):
    """A ``.filez`` stream: a header, then ``mib`` MiB of zeros as raw deflate (~1 KiB per MiB).

    After a full flush the compressor's state is reset, so each MiB compresses to the same bytes:
    the stream is generated on the fly and never held in memory.
    """

    def __init__(self, prefix: bytes, mib: int) -> None:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
        assert compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH) == block
        self._parts = itertools.chain([prefix], itertools.repeat(block, mib), [compressor.flush()])
        self._pending = b""
        self.compressed_size = len(prefix) + mib * len(block) + 2

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            part = next(self._parts, None)
            if part is None:
                return 0
            self._pending = part
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def measure_peak(action: object) -> tuple[float, float]:
    """(tracemalloc peak, growth of the process's peak RSS) in MiB while running ``action()``."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        action()  # type: ignore[operator]
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    return peak / MiB, rss_growth_kib / 1024


def test_deflate_bomb_declared_small(empty_repo: Repo) -> None:
    bomb = DeflateBomb(filez(4096, b""), 1024)  # 1 GiB of zeros, 4 KiB declared

    def write() -> None:
        assert_filez_refused(empty_repo, SOME_CHECKSUM, bomb, "inflates past its declared size")

    peak, rss = measure_peak(write)
    assert peak < 50 and rss < 50


@pytest.mark.slow
def test_deflate_bomb_declared_honestly_with_the_wrong_name(empty_repo: Repo) -> None:
    """1 GiB of zeros, all of it inflated and hashed in bounded memory, then refused by name."""
    bomb = DeflateBomb(filez(GiB, b""), 1024)
    assert bomb.compressed_size < 2 * MiB

    def write() -> None:
        assert_filez_refused(empty_repo, SOME_CHECKSUM, bomb, "checksum mismatch")

    peak, rss = measure_peak(write)
    assert peak < 50 and rss < 50


# --- ref names ----------------------------------------------------------------------------------------

BAD_REFS = ["..", "../x", "x/..", "a/../b", "a/./b", ".hidden", "a\0b", "/abs", "/", "a//b", "a/", "",
            "-x", "a b", "x" * 256, "ü", "a:b"]  # fmt: skip


@pytest.mark.parametrize("ref", BAD_REFS, ids=repr)
def test_bad_ref_names_are_refused(repo_copy: Path, ref: str) -> None:
    repo = Repo.open(repo_copy)
    commit = repo.resolve_rev("os/stable")
    before = files_under(repo_copy)
    with pytest.raises(RepoError, match="ref") as info:
        repo.write_ref(ref, commit)
    assert "\n" not in str(info.value)
    with pytest.raises(RepoError):
        repo.write_ref(ref, None)
    with pytest.raises(RepoError):
        repo.read_ref(ref)
    with pytest.raises(RepoError):
        repo.resolve_rev(ref)
    assert files_under(repo_copy) == before
    assert repo.list_refs() == {"os/stable": commit}


@pytest.mark.parametrize("ref", ["../x", "a//b", "/abs", "x/.."])
def test_cli_bad_branch_is_one_line_and_changes_nothing(
    repo_copy: Path, tmp_path: Path, cli: Cli, ref: str
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file").write_text("x\n")
    before = files_under(repo_copy)
    rc, out, err = cli("commit", "--repo", repo_copy, "--branch", ref, "--tree", tree)
    # DESIGN §7 makes a bad argument a usage error (2); today the command exits 1: both are non-zero
    assert rc in (1, 2)
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("lanshare: ") and repr(ref) in err
    assert files_under(repo_copy) == before


# --- resolve_rev ----------------------------------------------------------------------------------------


def commits_sharing_a_prefix(repo: Repo, length: int = 4) -> tuple[str, str]:
    """Write two parseable commits whose checksums share their first ``length`` hex digits."""
    seen: dict[str, bytes] = {}
    for timestamp in itertools.count(1):
        data = Commit(root_tree=CHECKSUM.hex(), root_meta=CHECKSUM.hex(), timestamp=timestamp).to_bytes()
        prefix = hashlib.sha256(data).hexdigest()[:length]
        if prefix in seen:
            return repo.write_metadata(ObjectType.COMMIT, seen[prefix]), repo.write_metadata(
                ObjectType.COMMIT, data
            )
        seen[prefix] = data
    raise AssertionError("unreachable")


def test_resolve_rev_ambiguous_prefix(empty_repo: Repo) -> None:
    first, second = commits_sharing_a_prefix(empty_repo)
    prefix = first[:4]
    with pytest.raises(RepoError, match="ambiguous") as info:
        empty_repo.resolve_rev(prefix)
    assert prefix in str(info.value) and "\n" not in str(info.value)
    # a longer prefix that tells them apart resolves
    unique = next(n for n in range(5, 64) if first[:n] != second[:n])
    assert empty_repo.resolve_rev(first[:unique]) == first
    assert empty_repo.resolve_rev(second[:unique]) == second


@pytest.mark.parametrize("rev", ["nope", "os/nope", "origin:os/stable", "deadbeef", "abc", "", "^", "nope^"])
def test_resolve_rev_missing(repo_copy: Path, rev: str) -> None:
    repo = Repo.open(repo_copy)
    with pytest.raises(RepoError) as info:
        repo.resolve_rev(rev)
    message = str(info.value)
    assert "\n" not in message
    assert rev.rstrip("^") in message
    assert "no such ref or commit" in message or "not found" in message


def test_resolve_rev_parent_of_a_root_commit(repo_copy: Path) -> None:
    repo = Repo.open(repo_copy)
    commit = repo.resolve_rev("os/stable")
    with pytest.raises(RepoError, match="has no parent") as info:
        repo.resolve_rev("os/stable^")
    assert commit in str(info.value)
