"""Running a bench as a user does (``python3 -m bench.NAME …`` from the source tree), for its smoke test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def run_bench(module: str, *argv: str | Path, timeout: float = 120) -> str:
    """The output of ``python3 -m bench.MODULE ARGV``; the test fails, showing it all, unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *map(str, argv)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout
