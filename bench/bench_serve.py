"""The LAN listener's cost per request: stock ``ostree pull`` against one ``lanshare serve``, and nginx.

Serves an existing archive repository (``--repo``; e.g. ``served/`` of ``bench_pull --keep DIR``,
or a fresh small-file tree committed here when omitted) with one ``lanshare serve`` daemon and one
nginx, then runs ``ostree pull --disable-static-deltas --no-gpg-verify`` into fresh repositories
``--pulls`` times against each, alternating.  What it reports is the server's CPU time
(``/proc/PID/stat``) per request answered (nginx's access log counts the requests, and the
lanshare daemon answers the same ones), the figure that decides how close the daemon can get to
nginx when ostree keeps several requests in flight.  Wall times are printed too but are noisy on a
shared machine.  ``--keep DIR`` keeps the work directory (the daemon's log); ``--py-spy FILE``
records the daemon's stacks (raw format, GIL holder only) during its pulls.  ``--batch-clients N``
then has N peers at once fetch every object through the batch API (``POST /lanshare/v1/objects``,
512 names a request, two requests in flight per peer), the fan-out case, and reports the daemon's
CPU per object served.

    python -m bench.bench_serve [--repo DIR | --files N] [--pulls N] [--batch-clients N]
                                [--keep DIR] [--py-spy FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.bench_pull import BRANCH, LanshareServer
from bench.nginx import Nginx
from bench.treegen import DEFAULT_SMALL_FILES, generate_small_tree


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU-s of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _served_repo(workdir: Path, files: int) -> Path:
    """A small-file tree committed (unsigned) into a fresh archive repository."""
    tree, repo = workdir / "tree", workdir / "served"
    generate_small_tree(tree, files)
    subprocess.run(["ostree", "init", f"--repo={repo}", "--mode=archive"], check=True)
    subprocess.run(
        ["ostree", "commit", f"--repo={repo}", f"--branch={BRANCH}", f"--tree=dir={tree}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["ostree", "summary", "-u", f"--repo={repo}"], check=True)
    return repo


def _pull(url: str, target: Path) -> float:
    """One stock pull into a fresh repository; its wall time."""
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["ostree", "init", f"--repo={target}", "--mode=archive"], check=True)
    subprocess.run(
        ["ostree", "remote", "add", f"--repo={target}", "--no-gpg-verify", "origin", url], check=True
    )
    start = time.monotonic()
    subprocess.run(
        ["ostree", "pull", f"--repo={target}", "--disable-static-deltas", "origin", BRANCH],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - start


def _object_names(repo: Path) -> list[str]:
    return sorted(
        f"{d.name}{f.name}" for d in (repo / "objects").iterdir() if d.is_dir() for f in d.iterdir()
    )


async def _batch_clients(url: str, names: list[str], clients: int, batch: int) -> int:
    """``clients`` peers each fetching every object through the batch API, 2 requests in flight
    each; the streams are read, not decoded (the daemon's side is what is measured).  Bytes read."""
    import aiohttp

    total = 0

    async def one_batch(session: aiohttp.ClientSession, part: list[str]) -> None:
        nonlocal total
        async with session.post(f"{url}lanshare/v1/objects", json={"objects": part}) as response:
            response.raise_for_status()
            async for chunk in response.content.iter_chunked(256 * 1024):
                total += len(chunk)

    async def one_client() -> None:
        parts = [names[i : i + batch] for i in range(0, len(names), batch)]
        async with aiohttp.ClientSession() as session:
            for i in range(0, len(parts), 2):
                await asyncio.gather(*(one_batch(session, p) for p in parts[i : i + 2]))

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return total


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pulls and print CPU-s per request for both servers."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, help="archive repository to serve (default: generate one)")
    parser.add_argument(
        "--files", type=int, default=DEFAULT_SMALL_FILES, help="files of the generated tree (no --repo)"
    )
    parser.add_argument("--pulls", type=int, default=3, help="pulls per server (default 3)")
    parser.add_argument(
        "--batch-clients", type=int, default=0, help="then N peers at once fetch every object by batch"
    )
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (daemon log)")
    parser.add_argument("--py-spy", type=Path, help="record the daemon's stacks (raw) to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = args.keep.resolve() if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        repo = args.repo.resolve() if args.repo else _served_repo(workdir, args.files)
        env = dict(os.environ)
        daemon = LanshareServer(repo, workdir / "lanshare", env)
        nginx = Nginx(repo, workdir / "nginx")
        spy: subprocess.Popen[bytes] | None = None
        try:
            daemon.wait_until_listening()
            load = os.getloadavg()
            walls: dict[str, list[float]] = {"nginx": [], "lanshare": []}
            cpus: dict[str, list[float]] = {"nginx": [], "lanshare": []}
            users: dict[str, list[float]] = {"nginx": [], "lanshare": []}
            requests = 0
            for n in range(args.pulls):
                for name in ("nginx", "lanshare") if n % 2 == 0 else ("lanshare", "nginx"):
                    pid, url = (nginx.pid, nginx.url) if name == "nginx" else (daemon.pid, daemon.url)
                    if name == "lanshare" and args.py_spy and spy is None:
                        spy = _start_spy(pid, args.py_spy, "--gil")
                    offset = nginx.log_offset() if name == "nginx" else 0
                    user, system = _cpu_seconds(pid)
                    walls[name].append(_pull(url, workdir / f"pull-{name}"))
                    user_after, system_after = _cpu_seconds(pid)
                    cpus[name].append(user_after - user + system_after - system)
                    users[name].append(user_after - user)
                    if name == "nginx":
                        requests = nginx.bytes_sent_since(offset)[0]
            if args.pulls:
                _print_pulls(load, requests, walls, cpus, users)
            if args.batch_clients:
                if args.py_spy and spy is None:
                    # Every thread: the batch encoders work outside the GIL (reads, zstd).
                    spy = _start_spy(daemon.pid, args.py_spy)
                _run_batches(daemon, repo, args.batch_clients)
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            daemon.stop()
            nginx.stop()
    return 0


def _print_pulls(
    load: tuple[float, float, float],
    requests: int,
    walls: dict[str, list[float]],
    cpus: dict[str, list[float]],
    users: dict[str, list[float]],
) -> None:
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {requests} requests/pull")
    for name in ("nginx", "lanshare"):
        cpu = statistics.median(cpus[name])
        print(
            f"{name:<9} wall {statistics.median(walls[name]):5.2f} s  server {cpu:5.2f} CPU-s  "
            f"{cpu / requests * 1e6:6.1f} us/request ({statistics.median(users[name]):.2f} user)"
            "  (all CPU-s: " + " ".join(f"{c:.2f}" for c in cpus[name]) + ")"
        )


def _start_spy(pid: int, out: Path, *options: str) -> subprocess.Popen[bytes]:
    spy = subprocess.Popen(
        ["py-spy", "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", "500", "--nonblocking",
         *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    return spy


def _run_batches(daemon: LanshareServer, repo: Path, clients: int) -> None:
    names = _object_names(repo)
    user, system = _cpu_seconds(daemon.pid)
    start = time.monotonic()
    got = asyncio.run(_batch_clients(daemon.url, names, clients, 512))
    wall = time.monotonic() - start
    user_after, system_after = _cpu_seconds(daemon.pid)
    cpu = user_after - user + system_after - system
    objects = len(names) * clients
    print(
        f"batch     {clients} peers x {len(names)} objects: wall {wall:5.2f} s  server {cpu:5.2f} CPU-s  "
        f"{cpu / objects * 1e6:6.1f} us/object ({user_after - user:.2f} user)  ({got / 1e6:.1f} MB read)"
    )


if __name__ == "__main__":
    sys.exit(main())
