"""The serving bench runs end to end on a tiny tree: CPU per request for nginx and the daemon."""

from __future__ import annotations

import re

from tests.bench_run import run_bench
from tests.conftest import requires_ostree


@requires_ostree
def test_serve_bench_prints_cpu_per_request_and_per_batched_object() -> None:
    out = run_bench("bench_serve", "--files", "40", "--pulls", "1", "--batch-clients", "2", timeout=180)
    for server in ("nginx", "lanshare"):
        assert re.search(
            rf"^{server} +wall +\d+\.\d\d s +server +\d+\.\d\d CPU-s +\d+\.\d us/request", out, re.M
        ), out
    assert re.search(r"^batch +2 peers x \d+ objects: .* \d+\.\d us/object", out, re.M), out
