"""The status bench runs end to end on a tiny generated history."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import bench_status


def test_status_bench_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--refs", "2", "--commits", "5", "--base-files", "100", "--workdir", str(tmp_path)]
    assert bench_status.main(argv) == 0
    output = capsys.readouterr().out
    assert re.search(r"^repository: \d+ commits of followed refs, \d+ objects$", output, re.MULTILINE), output
    for line in ("first /api/v1/status", "later /api/v1/status", "page", "/metrics"):
        assert re.search(rf"^{re.escape(line)}: [0-9.]+ s \([0-9.]+x info\)", output, re.MULTILINE), output
    assert re.search(r"^retention plan in the background: [0-9.]+ s \(", output, re.MULTILINE), output
