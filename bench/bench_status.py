"""What the status listener costs on a big cache: a real ``lanshare serve`` over a generated history.

Generates (or reuses) a ``bench/historygen.py`` repository, starts the daemon on it, and times:
the first ``/api/v1/status`` (chain part plus up to 5 s waiting for the retention plan), later
requests while the plan runs in the background, the page and ``/metrics``, and how long the plan
took.  Baselines measured in the same run: ``GET /lanshare/v1/info`` on the same daemon's LAN
listener (the cheapest request it answers) and ``lanshare prune --dry-run`` on the same repository
(the same retention plan, computed by the command line).

    python -m bench.bench_status [--refs 50] [--commits 200] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.historygen import DEFAULT_BASE_FILES, generate_history

SOURCE_ROOT = Path(__file__).resolve().parent.parent
PLAN_TIMEOUT = 1800.0


def _get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=PLAN_TIMEOUT) as response:
        data: bytes = response.read()
    return time.perf_counter() - started, data


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 120
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"lanshare serve did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return path.read_text().strip()


def run_bench(repo: Path, work: Path) -> dict[str, Any]:
    """Start a daemon on ``repo`` and measure; returns the figures."""
    config = work / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\n[sharing]\nlisten = "127.0.0.1:0"\nadvertise = false\ndiscovery = false\n'
    )
    state = work / "state"
    env = {**os.environ, "LANSHARE_STATE_DIR": str(state)}
    log = work / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
            cwd=SOURCE_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    figures: dict[str, Any] = {}
    try:
        lan = "http://" + _wait_for(state / "lan-address", proc, log)
        status = "http://" + _wait_for(state / "status-address", proc, log)
        figures["info"] = min(_get(lan + "/lanshare/v1/info")[0] for _ in range(5))
        figures["first_api"], data = _get(status + "/api/v1/status")
        figures["api_bytes"] = len(data)
        time.sleep(1.1)  # past the one-second snapshot cache
        figures["later_api"] = _get(status + "/api/v1/status")[0]
        figures["page"], page = _get(status + "/")
        figures["page_bytes"] = len(page)
        figures["metrics"] = _get(status + "/metrics")[0]
        deadline = time.monotonic() + PLAN_TIMEOUT
        while True:
            document = json.loads(_get(status + "/api/v1/status")[1])
            if document["retention"]["computed_at"] is not None or time.monotonic() > deadline:
                break
            time.sleep(2)
        figures["plan"] = document["retention"]["seconds"]
        figures["commits"] = len(document["chain"]["commits"])
        figures["objects"] = document["disk"]["objects"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "prune", "--dry-run", "--json", "--config", str(config)],
        cwd=SOURCE_ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    figures["prune_dry_run"] = time.perf_counter() - started
    return figures


def format_report(f: dict[str, Any]) -> str:
    """The figures, with ratios against the baselines measured in the same run."""
    info = f["info"]
    plan = f["plan"]
    plan_text = f"{plan:.1f} s" if plan is not None else "not finished"
    ratio = f" ({plan / f['prune_dry_run']:.2f}x `lanshare prune --dry-run`, {f['prune_dry_run']:.1f} s)"
    lines = [
        f"repository: {f['commits']} commits of followed refs, {f['objects']} objects",
        f"baseline GET /lanshare/v1/info: {info * 1000:.1f} ms",
        f"first /api/v1/status: {f['first_api']:.2f} s ({f['first_api'] / info:.0f}x info), "
        f"{f['api_bytes'] / 1024:.0f} KiB",
        f"later /api/v1/status: {f['later_api']:.3f} s ({f['later_api'] / info:.1f}x info)",
        f"page: {f['page']:.3f} s ({f['page'] / info:.1f}x info), {f['page_bytes'] / 1024:.0f} KiB",
        f"/metrics: {f['metrics']:.3f} s ({f['metrics'] / info:.1f}x info)",
        f"retention plan in the background: {plan_text}" + (ratio if plan is not None else ""),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refs", type=int, default=50)
    parser.add_argument("--commits", type=int, default=200, help="commits per ref")
    parser.add_argument("--base-files", type=int, default=DEFAULT_BASE_FILES)
    parser.add_argument("--workdir", type=Path, help="keep the repository here and reuse it next time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-status-") as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        repo = work / f"repo-{args.refs}x{args.commits}"
        if not repo.exists():
            print(generate_history(repo, args.refs, args.commits, args.base_files).describe())
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
        print(format_report(run_bench(repo, run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
