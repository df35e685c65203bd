"""The commit/fsck bench runs end to end on a tiny generated tree, and both tools agree on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import bench_repo
from bench.treegen import generate_tree
from tests.conftest import ostree, requires_ostree


def _printed_checksum(output: str, tool: str) -> str:
    match = re.search(rf"^{tool} commit:\s+([0-9a-f]{{64}})$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


@requires_ostree
def test_bench_runs_and_lanshare_commit_matches_ostree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--files", "200", "--size", "2000000", "--rounds", "1", "--keep", str(tmp_path)]
    assert bench_repo.main(argv) == 0
    output = capsys.readouterr().out
    checksum = _printed_checksum(output, "ostree")
    assert _printed_checksum(output, "lanshare") == checksum
    # The repositories the bench kept really hold that commit, and ostree accepts lanshare's.
    for name in ("repo-ostree-0", "repo-lanshare-0"):
        assert ostree("rev-parse", f"--repo={tmp_path / name}", bench_repo.BRANCH).stdout.strip() == checksum
    ostree("fsck", f"--repo={tmp_path / 'repo-lanshare-0'}")
    for op in ("commit (fresh repo)", "fsck (lanshare-made repo)", "fsck (ostree-made repo)"):
        assert re.search(rf"^{re.escape(op)} .* (PASS|MISS)$", output, re.MULTILINE), output


def test_tree_generator_is_deterministic(tmp_path: Path) -> None:
    a = generate_tree(tmp_path / "a", files=300, total_bytes=1_000_000, seed=7)
    b = generate_tree(tmp_path / "b", files=300, total_bytes=1_000_000, seed=7)
    assert a == b
    assert a.files + a.symlinks == 300
    assert 900_000 <= a.total_bytes <= 1_100_000
    listing = {}
    for root in (tmp_path / "a", tmp_path / "b"):
        entries = sorted(p.relative_to(root) for p in root.rglob("*"))
        listing[root.name] = [
            (e, (root / e).lstat().st_mode, (root / e).read_bytes() if (root / e).is_file() else None)
            for e in entries
        ]
    assert listing["a"] == listing["b"]
