"""The pull bench runs end to end on a tiny tree: four ways of pulling, every pulled repository checked."""

from __future__ import annotations

import re
from pathlib import Path

from bench import bench_pull
from tests.bench_run import run_bench
from tests.conftest import ostree, requires_ostree


@requires_ostree
def test_pull_bench_prints_the_table_and_the_four_ratios(tmp_path: Path) -> None:
    argv = ["--files", "50", "--size", "500000", "--rounds", "1", "--keep", str(tmp_path)]
    out = run_bench("bench_pull", *argv)
    assert "every pulled repository passed ostree fsck and holds that commit: yes" in out, out
    for _, label, _ in bench_pull.WAYS:
        assert re.search(rf"^{re.escape(label)} +\d+\.\d\d +\d+\.\d\d ", out, re.MULTILINE), out
    for goal in ("a", "b", "c", "e"):
        assert re.search(rf"^\({goal}\) .* (PASS|MISS)$", out, re.MULTILINE), out
    # The daemon way's pull was run by the client's daemon (the bench fails otherwise), and both
    # lanshare ways are reported against the goal.
    assert re.search(r"^    the same, the command pulling alone.* (PASS|MISS)$", out, re.MULTILINE), out
    assert re.search(r"^\(d\) bytes on lo: .* \d+\.\d\d \(no goal\)$", out, re.MULTILINE), out
    # The kept repositories of the last round hold the served commit, pulled by each client.
    served = re.search(r"^served commit: ([0-9a-f]{64}) ", out, re.MULTILINE)
    assert served, out
    pulled = {
        key: ostree("rev-parse", f"--repo={tmp_path / f'round0-{key}' / 'repo'}", ref).stdout.strip()
        for key, ref in (
            ("lanshare", bench_pull.BRANCH),
            (bench_pull.DAEMON_WAY, bench_pull.BRANCH),
            ("ostree-nginx", f"origin:{bench_pull.BRANCH}"),
            ("ostree-lanshare", f"origin:{bench_pull.BRANCH}"),
        )
    }
    assert set(pulled.values()) == {served.group(1)}, pulled
