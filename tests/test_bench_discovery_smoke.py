"""The discovery bench runs end to end for one round on a namespace LAN and prints every measure."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench_run import run_bench
from tests.netns import require_namespaces


def test_discovery_bench_prints_every_measure_and_goal(tmp_path: Path) -> None:
    require_namespaces()
    out = run_bench("bench_discovery", "--rounds", "1", "--keep", tmp_path, timeout=180)
    timing = r"\d+\.\d{3} / +\d+\.\d{3}"
    for label in ("daemon start -> B's table", "commit done -> B's table", "SIGTERM -> B forgets it"):
        assert re.search(rf"^{re.escape(label)} +{timing} +{timing} ", out, re.M), out
    assert re.search(r"^SIGKILL -> B marks it down +\d+\.\d{3} / +\d+\.\d{3} +never", out, re.M), out
    for goal in ("advert to B's table", "TXT change", "graceful removal", "crash marked down"):
        assert re.search(rf"^goal {goal} <= \d+ s: max \d+\.\d{{3}} s (PASS|MISS)$", out, re.M), out
