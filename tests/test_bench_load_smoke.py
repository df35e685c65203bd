"""The load bench runs end to end with a few peers for a few seconds: every object verified, no error."""

from __future__ import annotations

import re

from tests.bench_run import run_bench


def test_load_bench_prints_its_figures_with_no_error_and_no_corrupt_object() -> None:
    argv = [
        "--peers",
        "4",
        "--duration",
        "3",
        "--idle",
        "1",
        "--procs",
        "1",
        "--files",
        "60",
        "--size",
        "800000",
    ]
    out = run_bench("bench_load", *argv)
    completed = re.search(r"^whole pulls completed: (\d+)$", out, re.MULTILINE)
    assert completed and int(completed.group(1)) > 0, out
    assert re.search(r"^objects verified: [1-9]\d* ", out, re.MULTILINE), out
    assert "\nerrors: 0\n" in out and "\ncorrupt objects: 0\n" in out, out
    for phase in ("idle", "loaded"):
        pattern = (
            rf"^status page GET / {phase}: +[1-9]\d* samples, p50 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms$"
        )
        assert re.search(pattern, out, re.MULTILINE), out
    assert re.search(
        r"^daemon RSS: [\d.]+ MB at start, [\d.]+ MB at end, peak [\d.]+ MB$", out, re.MULTILINE
    ), out
    assert re.search(r"^goal no error, no corrupt byte: PASS$", out, re.MULTILINE), out
