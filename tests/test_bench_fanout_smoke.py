"""The fan-out bench runs end to end on a tiny tree: clients pulling at once, every repository checked."""

from __future__ import annotations

import re

from tests.bench_run import run_bench
from tests.conftest import requires_ostree


@requires_ostree
def test_fanout_bench_prints_both_ways_and_the_two_goals() -> None:
    out = run_bench("bench_fanout", "--clients", "2", "--files", "40", timeout=180)
    assert "every pulled repository passed ostree fsck and holds that commit: yes" in out, out
    labels = ("lanshare pull <- lanshare serve", "lanshare pull, its daemon <- serve", "ostree pull <- nginx")
    for label in labels:
        assert re.search(rf"^2 x {re.escape(label)} +\d+\.\d\d +\d+\.\d\d +\d+\.\d\d ", out, re.MULTILINE), (
            out
        )
    assert re.search(r"^\(f\) .* it\): \d+\.\d\d \(goal <= 0\.5\) (PASS|MISS)$", out, re.MULTILINE), out
    alone = r"^    the same, the commands pulling alone .*: \d+\.\d\d (PASS|MISS)$"
    assert re.search(alone, out, re.MULTILINE), out
    assert re.search(
        r"^\(g\) lanshare serve peak RSS: \d+ MB \(goal <= 200 MB\) (PASS|MISS)$", out, re.MULTILINE
    )
