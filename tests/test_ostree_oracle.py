"""lanshare and the Debian ostree CLI must agree on every byte of an archive repository."""

from __future__ import annotations

import filecmp
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanshare.fsck import fsck
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from tests.conftest import build_tree, lanshare, ostree, ostree_commit

TIMESTAMP = "1700000000"


def lanshare_commit(repo: Path, branch: str, tree: Path, *extra: str) -> str:
    """Commit with lanshare's CLI using the same options as :func:`ostree_commit`."""
    args: list[str | Path] = ["commit", "--repo", repo, "--branch", branch, "--tree", tree]
    args += ["--owner-uid", "0", "--owner-gid", "0", "--no-xattrs", *extra]
    assert lanshare(*args) == 0
    head = Repo.open(repo).read_ref(branch)
    assert head is not None
    return head


def assert_same_tree(a: Path, b: Path) -> None:
    """Recursively compare names, types, modes, symlink targets and file bytes."""
    for root, dirs, files in os.walk(a):
        rel = Path(root).relative_to(a)
        other = b / rel
        assert sorted(os.listdir(root)) == sorted(os.listdir(other)), rel
        for name in dirs + files:
            sa, sb = os.lstat(Path(root) / name), os.lstat(other / name)
            assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), rel / name
            assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), rel / name
            if stat.S_ISLNK(sa.st_mode):
                assert os.readlink(Path(root) / name) == os.readlink(other / name)
            elif stat.S_ISREG(sa.st_mode):
                assert filecmp.cmp(Path(root) / name, other / name, shallow=False), rel / name


def test_lanshare_reads_and_verifies_a_repo_written_by_ostree(tmp_path: Path, ostree_repo: Path) -> None:
    tree = build_tree(tmp_path / "tree")
    first = ostree_commit(ostree_repo, "os/stable", tree, "-s", "v1")
    (tree / "etc" / "os-release").write_text("NAME=Test\nVERSION_ID=2\n")
    second = ostree_commit(ostree_repo, "os/stable", tree, "-s", "v2")

    repo = Repo.open(ostree_repo)
    assert repo.list_refs() == {"os/stable": second}
    assert repo.resolve_rev("os/stable^") == first
    assert repo.resolve_rev(second[:10]) == second
    commit = repo.load_commit(second)
    assert commit.parent == first and commit.subject == "v2"
    assert repo.missing_objects(second) == []

    report = fsck(repo)
    assert report.ok, report.problems
    assert report.commits_checked == 2
    assert report.objects_checked == sum(1 for _ in (ostree_repo / "objects").glob("*/*"))

    # Every content object's data matches the source tree byte for byte.
    names = {name: checksum for name, checksum in repo.load_dirtree(commit.root_tree).files}
    header, chunks = repo.open_content(names["unicode-ñame.txt"])
    assert b"".join(chunks) == (tree / "unicode-ñame.txt").read_bytes()
    assert header.uid == 0 and stat.S_IMODE(header.mode) == 0o644


def test_ostree_accepts_a_repo_written_by_lanshare(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "tree")
    repo = tmp_path / "repo"
    checksum = lanshare_commit(repo, "os/stable", tree, "--subject", "first", "--version", "1.0")

    assert "no errors found" in ostree("fsck", f"--repo={repo}").stdout
    log = ostree("log", f"--repo={repo}", "os/stable").stdout
    assert checksum in log and "first" in log and "Version: 1.0" in log
    show = ostree("show", f"--repo={repo}", "--print-metadata-key=version", "os/stable").stdout
    assert show.strip() == "'1.0'"
    listing = ostree("ls", f"--repo={repo}", "-R", "os/stable").stdout
    assert "/bin -> usr/bin" in listing and "/var/empty-dir" in listing

    out = tmp_path / "checkout"
    ostree("checkout", f"--repo={repo}", "os/stable", str(out))
    assert_same_tree(tree, out)


@pytest.mark.parametrize("collection_id", [None, "org.example.Os"])
def test_same_checksums_as_ostree_commit(tmp_path: Path, collection_id: str | None) -> None:
    tree = build_tree(tmp_path / "tree", seed=3)
    theirs = tmp_path / "theirs"
    init = ["init", f"--repo={theirs}", "--mode=archive"]
    ostree(*init, *([f"--collection-id={collection_id}"] if collection_id else []))
    expected = ostree_commit(
        theirs, "os/stable", tree, f"--timestamp=@{TIMESTAMP}", "-s", "subj", "-m", "body"
    )

    ours = tmp_path / "ours"
    extra = ["--collection-id", collection_id] if collection_id else []
    actual = lanshare_commit(
        ours, "os/stable", tree, "--timestamp", TIMESTAMP, "--subject", "subj", "--body", "body", *extra
    )
    assert actual == expected
    a, b = Repo.open(ours), Repo.open(theirs)
    assert a.load_commit(actual).root_tree == b.load_commit(expected).root_tree
    # Identical object sets, not only identical names at the top.
    ours_objects = {(c, k) for c, k, _ in a.iter_objects()}
    assert ours_objects == {(c, k) for c, k, _ in b.iter_objects()}


def test_parent_is_the_branch_head_and_checkpoint_metadata_is_recorded(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tree = build_tree(tmp_path / "tree")
    v1 = lanshare_commit(repo, "os/stable", tree, "--version", "1")
    v2 = lanshare_commit(repo, "os/stable", tree, "--version", "2", "--checkpoint")
    v3 = lanshare_commit(repo, "os/stable", tree, "--checkpoint-target", "os/stable-v2")
    v4 = lanshare_commit(
        repo, "os/stable-v2", tree, "--parent", "none", "--checkpoint-source", f"os/stable@{v3}"
    )
    r = Repo.open(repo)
    assert r.load_commit(v2).parent == v1 and r.load_commit(v3).parent == v2
    assert r.load_commit(v4).parent is None
    assert r.load_commit(v2).meta_value("lanshare.checkpoint") is True
    assert r.load_commit(v3).meta_value("eos.checkpoint-target") == "os/stable-v2"
    assert r.load_commit(v4).meta_value("lanshare.checkpoint-source") == f"os/stable@{v3}"
    shown = ostree("show", f"--repo={repo}", "--print-metadata-key=eos.checkpoint-target", v3).stdout
    assert shown.strip() == "'os/stable-v2'"
    assert "no errors found" in ostree("fsck", f"--repo={repo}").stdout


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..")
)
_files = st.one_of(
    st.tuples(
        st.just("file"), st.binary(max_size=3000), st.sampled_from([0o644, 0o600, 0o755, 0o4711, 0o444])
    ),
    st.tuples(st.just("link"), st.text(alphabet="abc/._", min_size=1, max_size=20), st.just(0o777)),
)
_trees = st.recursive(
    st.dictionaries(_names, _files, max_size=5),
    lambda children: st.dictionaries(_names, st.one_of(_files, children), max_size=4),
    max_leaves=25,
)


def _materialize(root: Path, spec: dict[str, object]) -> None:
    root.mkdir()
    for name, item in spec.items():
        path = root / name
        if isinstance(item, dict):
            _materialize(path, item)
        else:
            assert isinstance(item, tuple)
            kind, payload, mode = item
            if kind == "file":
                path.write_bytes(payload)
                path.chmod(mode)
            else:
                path.symlink_to(payload)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_trees)
def test_generated_trees_get_the_same_root_checksums(
    tmp_path_factory: pytest.TempPathFactory, spec: dict[str, object]
) -> None:
    base = tmp_path_factory.mktemp("gen")
    tree = base / "tree"
    _materialize(tree, spec)
    theirs = base / "theirs"
    ostree("init", f"--repo={theirs}", "--mode=archive")
    expected = ostree_commit(theirs, "t", tree, f"--timestamp=@{TIMESTAMP}")
    actual = lanshare_commit(base / "ours", "t", tree, "--timestamp", TIMESTAMP)
    assert actual == expected
    ours = Repo.open(base / "ours")
    assert all(ours.has_object(c, k) for c, k in Repo.open(theirs).iter_closure(expected))
    assert ours.has_object(expected, ObjectType.COMMIT)


def test_metadata_in_the_same_order_gives_the_same_commit(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "tree")
    theirs = tmp_path / "theirs"
    ostree("init", f"--repo={theirs}", "--mode=archive", "--collection-id=org.example.Os")
    meta = ["version=1.0", "eos.checkpoint-target=os/stable-v2"]
    expected = ostree_commit(
        theirs, "os/stable", tree, f"--timestamp=@{TIMESTAMP}", *(f"--add-metadata-string={m}" for m in meta)
    )
    actual = lanshare_commit(
        tmp_path / "ours",
        "os/stable",
        tree,
        "--timestamp",
        TIMESTAMP,
        "--collection-id",
        "org.example.Os",
        *(arg for m in meta for arg in ("--add-metadata-string", m)),
    )
    assert actual == expected
