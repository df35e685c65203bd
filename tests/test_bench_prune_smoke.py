"""The prune bench runs end to end on a tiny generated history, and every pruned copy passes ostree fsck."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import bench_prune
from bench.historygen import generate_history
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from tests.conftest import ostree, requires_ostree

NOW = 1_790_000_000


@requires_ostree
def test_prune_bench_runs_and_both_pruned_repos_pass_ostree_fsck(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--refs", "3", "--commits", "10", "--base-files", "150", "--rounds", "1"]
    assert bench_prune.main([*argv, "--fsck-source", "--keep", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    for name, _, _ in bench_prune.PAIRS:
        assert re.search(rf"^{name} .* time (PASS|MISS), memory (PASS|MISS)$", output, re.MULTILINE), output
    assert re.search(r"^exact object count: \d+ ", output, re.MULTILINE), output
    source = Repo.open(tmp_path / "source")
    refs = source.list_refs()
    assert len(refs) == 3
    # The bench fsck'd the first round's copies; check them here too, and that prune kept every ref.
    for variant in ("ostree", "lanshare", "ostree-younger", "lanshare-tight"):
        pruned = tmp_path / f"round0-{variant}" / "repo"
        assert "no errors found" in ostree("fsck", f"--repo={pruned}").stdout
        assert Repo.open(pruned).list_refs() == refs
    before = sum(1 for _ in source.iter_objects())
    left = {
        v: sum(1 for _ in Repo.open(tmp_path / f"round0-{v}" / "repo").iter_objects())
        for v in ("ostree", "lanshare")
    }
    # Both deleted something: garbage for lanshare, garbage and orphaned commits for ostree.
    assert left["ostree"] < left["lanshare"] < before


def test_history_generator_is_deterministic_and_has_what_prune_needs(tmp_path: Path) -> None:
    a = generate_history(tmp_path / "a", refs=4, commits=12, base_files=120, seed=3, now=NOW)
    b = generate_history(tmp_path / "b", refs=4, commits=12, base_files=120, seed=3, now=NOW)
    assert a.refs == b.refs and a.objects == b.objects
    listing = {
        name: sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name / "objects").rglob("*"))
        for name in ("a", "b")
    }
    assert listing["a"] == listing["b"]
    assert len(a.refs) == 4 and a.commits_on_refs == 48 and len(a.switches) == 1
    repo = Repo.open(tmp_path / "a")
    old, new = a.switches[0]
    # The switch commit on the old ref names its successor; the successor's root names its source.
    walk = repo.read_ref(old)
    targets = []
    while walk:
        commit = repo.load_commit(walk)
        targets.append(commit.meta_value("eos.checkpoint-target"))
        walk = commit.parent
    assert new in targets
    root = repo.read_ref(new)
    while root and (parent := repo.load_commit(root).parent):
        root = parent
    assert root is not None
    assert str(repo.load_commit(root).meta_value("lanshare.checkpoint-source")).startswith(f"{old}@")
    assert a.deleted_ref_commits > 0 and a.partial_commits > 0 and repo.partial_commits()
    assert all(NOW - 731 * 86400 <= t <= NOW for t in (a.oldest, a.newest))
    assert sum(1 for _, kind, _ in repo.iter_objects() if kind is ObjectType.COMMIT) == a.objects["commit"]
