"""Load: many concurrent pulling peers against one ``lanshare serve`` daemon on loopback.

Generates an OS-like tree (bench/treegen.py), commits it with ``lanshare commit`` and starts one
real daemon (LAN and status listeners on 127.0.0.1, default limits). Then, for ``--duration``
seconds, ``--peers`` in-process aiohttp peers (spread over ``--procs`` client processes) pull the
commit again and again, as a lanshare peer or a stock client would: ``/lanshare/v1/info``, the ref,
then the tree level by level and every file — half the peers through the batch API, half with
plain archive GETs. Every object is verified client-side (SHA-256 of metadata, a full inflate and
checksum of each ``.filez``). A 503 with ``Retry-After`` (the listener's connection limit at work)
is obeyed and counted, not an error; anything else unexpected is an error.

A separate sampler process times ``GET /`` on the status listener every 100 ms, first with the
daemon idle (the baseline), then during the load; the daemon's resident memory is read from
``/proc`` (VmRSS at start, VmHWM at the end). Printed: cycles, objects and bytes verified, errors,
corrupt objects, busy answers, the status page's p50/p99/max latency idle and under load with the
p99 ratio, and the daemon's peak RSS. Goals are printed as PASS or MISS, never asserted: p99 under
load ≤ 250 ms, peak RSS ≤ 300 MB, zero errors and zero corrupt objects. Exit 1 on errors or
corruption.

    python -m bench.bench_load [--peers 50] [--duration 60] [--procs 2] [--files N] [--size BYTES]
                               [--mode mixed|batch|archive]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.treegen import generate_tree
from lanshare import wire
from lanshare.cli import main as lanshare_main
from lanshare.errors import CorruptObject
from lanshare.ostree import content
from lanshare.ostree.objects import Commit, DirTree, ObjectType, sha256_hex
from lanshare.ostree.repo import Repo

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BRANCH = "bench/load"
GOAL_P99_MS = 250.0
GOAL_RSS_MB = 300.0
BATCH = 256  # names per batch request, as the pull engine sends at most
GETS_IN_FLIGHT = 4  # archive GETs one archive peer keeps in flight
SAMPLE_INTERVAL = 0.1


# --- one peer ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the peers of one client process did."""

    cycles: int = 0
    objects: int = 0
    bytes: int = 0
    busy: int = 0
    errors: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


def _verify(name: wire.ObjectName, data: bytes) -> None:
    """Raise CorruptObject unless ``data`` is the object ``name`` names."""
    if name.kind is ObjectType.FILE:
        actual, _ = content.checksum_filez(io.BytesIO(data), str(name))
    else:
        actual = sha256_hex(data)
    if actual != name.checksum:
        raise CorruptObject(str(name), f"hashes to {actual}")


class Peer:
    """One pulling peer: fetches the whole commit, verifying every object, until the deadline."""

    def __init__(self, session: aiohttp.ClientSession, url: str, batch: bool, tally: Tally) -> None:
        self.session = session
        self.url = url
        self.batch = batch
        self.tally = tally

    async def _request(self, method: str, path: str, **kwargs: object) -> bytes:
        """The body of a 200 answer; waits out 503s (counted); anything else raises."""
        while True:
            async with self.session.request(method, self.url + path, **kwargs) as response:  # type: ignore[arg-type]
                if response.status == 503:
                    self.tally.busy += 1
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                if response.status != 200:
                    raise RuntimeError(f"{method} {path}: HTTP {response.status}")
                return await response.read()

    async def _get(self, name: wire.ObjectName) -> bytes:
        return await self._request(
            "GET", f"objects/{name.checksum[:2]}/{name.checksum[2:]}.{name.kind.value}"
        )

    async def _store(self, name: wire.ObjectName, data: bytes) -> bytes:
        try:
            if len(data) > 64 * 1024:
                await asyncio.to_thread(_verify, name, data)
            else:
                _verify(name, data)
        except CorruptObject as e:
            self.tally.corrupt.append(str(e))
            raise
        self.tally.objects += 1
        self.tally.bytes += len(data)
        return data

    async def fetch(self, names: Sequence[wire.ObjectName]) -> dict[wire.ObjectName, bytes]:
        """Every object in ``names``, verified."""
        got: dict[wire.ObjectName, bytes] = {}
        if self.batch:
            for start in range(0, len(names), BATCH):
                part = list(names[start : start + BATCH])
                body = await self._request(
                    "POST", "lanshare/v1/objects", json={"objects": [str(n) for n in part]}
                )
                decoder = wire.BatchDecoder(part)
                records = decoder.feed(body)
                decoder.finish()
                for name, data, status in records:
                    if status == wire.TOO_LARGE:  # big objects come by the archive path
                        got[name] = await self._store(name, await self._get(name))
                    elif status != wire.PRESENT or data is None:
                        raise RuntimeError(f"{name}: batch status {status}")
                    else:
                        got[name] = await self._store(name, data)
            return got
        queue = iter(names)

        async def worker() -> None:
            for name in queue:
                got[name] = await self._store(name, await self._get(name))

        await asyncio.gather(*(worker() for _ in range(GETS_IN_FLIGHT)))
        return got

    async def cycle(self) -> None:
        """One whole pull of the branch head."""
        info = json.loads(await self._request("GET", "lanshare/v1/info"))
        commit = (await self._request("GET", f"refs/heads/{BRANCH}")).decode().strip()
        if info["refs"].get(BRANCH) != commit:
            raise RuntimeError("info and the ref disagree")
        name = wire.ObjectName(commit, ObjectType.COMMIT)
        parsed = Commit.from_bytes((await self.fetch([name]))[name])
        trees, metas, files = [parsed.root_tree], {parsed.root_meta}, set[str]()
        level = [wire.ObjectName(parsed.root_meta, ObjectType.DIR_META)]
        while trees:
            level += [wire.ObjectName(t, ObjectType.DIR_TREE) for t in trees]
            got = await self.fetch(level)
            trees, level = [], []
            for obj, data in got.items():
                if obj.kind is not ObjectType.DIR_TREE:
                    continue
                tree = DirTree.from_bytes(data)
                files.update(c for _, c in tree.files)
                for _, sub_tree, sub_meta in tree.dirs:
                    trees.append(sub_tree)
                    if sub_meta not in metas:
                        metas.add(sub_meta)
                        level.append(wire.ObjectName(sub_meta, ObjectType.DIR_META))
        await self.fetch([wire.ObjectName(c, ObjectType.FILE) for c in sorted(files)])
        self.tally.cycles += 1

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                await self.cycle()
            except CorruptObject:
                pass  # already recorded
            except Exception as e:  # every failure is a figure of the bench
                self.tally.errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.1)


async def run_peers(url: str, peers: int, first: int, duration: float, mode: str = "mixed") -> Tally:
    """Run ``peers`` peers (mixed: even index batch API, odd archive GETs) until ``duration`` is over."""
    tally = Tally()
    deadline = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(
            *(Peer(session, url, _uses_batch(mode, first + i), tally).run(deadline) for i in range(peers))
        )
    return tally


def _uses_batch(mode: str, index: int) -> bool:
    return mode == "batch" or (mode == "mixed" and index % 2 == 0)


# --- the status page sampler (its own process: client load must not slow the clock) ---------------


def sample_status(address: str, duration: float) -> list[float]:
    """Milliseconds per ``GET /`` on the status listener, one request every SAMPLE_INTERVAL."""
    host, _, port = address.rpartition(":")
    latencies: list[float] = []
    deadline = time.monotonic() + duration
    while True:
        started = time.monotonic()
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("GET", "/", headers={"Host": address})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status page: HTTP {response.status}")
        finally:
            connection.close()
        elapsed = time.monotonic() - started
        latencies.append(elapsed * 1000)
        if time.monotonic() >= deadline:
            return latencies
        time.sleep(max(0.0, SAMPLE_INTERVAL - elapsed))


# --- the daemon ----------------------------------------------------------------------------------


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    lan: str
    status: str
    log: Path

    def memory_kib(self, field_name: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field_name}")


def start_daemon(work: Path, repo: Path) -> Daemon:
    state = work / "state"
    config = work / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\n[sharing]\nlisten = "127.0.0.1:0"\nadvertise = false\ndiscovery = false\n'
        '[status]\nlisten = "127.0.0.1:0"\n'
    )
    log = work / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
            cwd=PROJECT_ROOT,
            env={**os.environ, "LANSHARE_STATE_DIR": str(state)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while not ((state / "lan-address").exists() and (state / "status-address").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"lanshare serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
    lan = (state / "lan-address").read_text().strip()
    status = (state / "status-address").read_text().strip()
    return Daemon(proc, f"http://{lan}/", status, log)


# --- the bench -----------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _child(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_load", *argv], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )


def run_bench(args: argparse.Namespace, work: Path) -> int:
    tree = work / "tree"
    stats = generate_tree(tree, files=args.files, total_bytes=args.size, seed=7)
    repo = work / "repo"
    if (
        lanshare_main(["commit", "--repo", str(repo), "--branch", BRANCH, "--tree", str(tree), "--no-xattrs"])
        != 0
    ):
        raise RuntimeError("lanshare commit failed")
    commit = Repo.open(repo).read_ref(BRANCH)
    objects = sum(1 for _ in Repo.open(repo).iter_objects())
    daemon = start_daemon(work, repo)
    try:
        rss_start = daemon.memory_kib("VmRSS")
        sample_status(daemon.status, 0.0)  # the first page render warms caches: not a sample
        idle = sample_status(daemon.status, args.idle)
        per_proc = [args.peers // args.procs + (i < args.peers % args.procs) for i in range(args.procs)]
        firsts = [sum(per_proc[:i]) for i in range(args.procs)]
        sampler = _child(["--sample", daemon.status, "--duration", str(args.duration)])
        client_args = ["--duration", str(args.duration), "--mode", args.mode]
        clients = [
            _child(["--client", daemon.lan, "--peers", str(n), "--first", str(first), *client_args])
            for n, first in zip(per_proc, firsts, strict=True)
        ]
        tallies = [json.loads(c.communicate()[0]) for c in clients]
        loaded = json.loads(sampler.communicate()[0])
        rss_peak = daemon.memory_kib("VmHWM")
        rss_end = daemon.memory_kib("VmRSS")
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(30)
    errors = [e for t in tallies for e in t["errors"]]
    corrupt = [c for t in tallies for c in t["corrupt"]]
    cycles = sum(t["cycles"] for t in tallies)
    verified = sum(t["objects"] for t in tallies)
    nbytes = sum(t["bytes"] for t in tallies)
    busy = sum(t["busy"] for t in tallies)
    p99_idle, p99_load = _percentile(idle, 0.99), _percentile(loaded, 0.99)
    print(f"commit: {commit} ({objects} objects, {stats.files} files, {stats.total_bytes} bytes of files)")
    batch = sum(_uses_batch(args.mode, i) for i in range(args.peers))
    print(f"peers: {args.peers} ({batch} batch API, {args.peers - batch} archive GETs) "
          f"in {args.procs} client processes, {args.duration:.0f} s")  # fmt: skip
    print(f"whole pulls completed: {cycles}")
    print(f"objects verified: {verified} ({nbytes / 1e6:.1f} MB, {verified / args.duration:.0f} objects/s)")
    print(f"busy answers (503 + Retry-After, obeyed): {busy}")
    print(f"errors: {len(errors)}")
    for error in errors[:5]:
        print(f"  {error}")
    print(f"corrupt objects: {len(corrupt)}")
    for bad in corrupt[:5]:
        print(f"  {bad}")
    print(
        f"status page GET / idle:  {len(idle)} samples, p50 {statistics.median(idle):.1f} ms, "
        f"p99 {p99_idle:.1f} ms, max {max(idle):.1f} ms"
    )
    print(
        f"status page GET / loaded: {len(loaded)} samples, p50 {statistics.median(loaded):.1f} ms, "
        f"p99 {p99_load:.1f} ms, max {max(loaded):.1f} ms"
    )
    print(f"status p99 loaded / idle: {p99_load / max(p99_idle, 0.001):.2f}")
    mb = [kib / 1024 for kib in (rss_start, rss_end, rss_peak)]
    print(f"daemon RSS: {mb[0]:.1f} MB at start, {mb[1]:.1f} MB at end, peak {mb[2]:.1f} MB")
    verdict = "PASS" if p99_load <= GOAL_P99_MS else "MISS"
    print(f"goal status p99 under load <= {GOAL_P99_MS:.0f} ms: {p99_load:.1f} ms {verdict}")
    verdict = "PASS" if rss_peak / 1024 <= GOAL_RSS_MB else "MISS"
    print(f"goal daemon peak RSS <= {GOAL_RSS_MB:.0f} MB: {rss_peak / 1024:.1f} MB {verdict}")
    print(f"goal no error, no corrupt byte: {'PASS' if not errors and not corrupt else 'MISS'}")
    return 1 if errors or corrupt else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle status sampling (baseline)")
    parser.add_argument("--procs", type=int, default=2, help="client processes the peers are spread over")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=40_000_000, help="total bytes of the tree's files")
    parser.add_argument(
        "--mode", choices=["mixed", "batch", "archive"], default="mixed", help="how peers fetch"
    )
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    # Internal: the child processes.
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        tally = asyncio.run(run_peers(args.client, args.peers, args.first, args.duration, args.mode))
        print(json.dumps(tally.__dict__))
        return 0
    if args.sample:
        print(json.dumps(sample_status(args.sample, args.duration)))
        return 0
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run_bench(args, args.keep)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as work:
        return run_bench(args, Path(work))


if __name__ == "__main__":
    sys.exit(main())
