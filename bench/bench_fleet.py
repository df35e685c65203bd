"""One download per LAN: N machines switched on together, one shaped origin, one commit.

On a namespace LAN, N machines (``lanshare serve`` with mDNS, following one ref) are switched on
at once; the origin is a plain HTTP server in the LAN's hub namespace, its link shaped with
``tc tbf`` (40 Mbit/s by default), its access log counting every object it sent.  For N = 2, 4, 8
(medians of ``--runs``) the table gives the origin's object bytes over the commit's archive bytes
and the time until all N are current over the time one machine alone takes on the same link, with
coordination on (``[pull] coordinate``, the default) and off (the baseline: today's behaviour),
plus a row where one machine is SIGKILLed mid-way and restarted once the others are done.

Goals: origin bytes <= 1.1x for every N; time <= 1.3x; with a machine killed, bytes <= 1.5x.

    python3 -m bench.bench_fleet [--size-mb 8] [--runs 3] [--ns 2,4,8] [--rate 40mbit] [--keep DIR]

Needs root (namespaces, tc).  Timings depend on the machine's load (printed); byte ratios do not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lanshare.netns import NetnsLan
from lanshare.netns_daemon import NamespaceDaemon, poll
from tests.fleet_lan import (
    Origin,
    archive_objects,
    file_objects,
    holds,
    machine_config,
    origin_in_hub,
    publish,
)
from tests.netns import NetnsUnavailable, netns_lan_context

GOAL_BYTES, GOAL_TIME, GOAL_KILLED_BYTES = 1.1, 1.3, 1.5
DEADLINE = 600.0


@dataclass
class Run:
    """One switch-on: the origin's object bytes and the seconds until every machine was current."""

    origin_bytes: int
    seconds: float


def _wait_all(machines: Sequence[NamespaceDaemon], commit: str, started: float) -> float:
    """Seconds from ``started`` until every machine holds the commit."""
    left = list(machines)

    def done() -> bool:
        for machine in list(left):
            if holds(machine.repo, commit):
                left.remove(machine)
            elif (why := machine.exited()) is not None:
                raise RuntimeError(why)
        return not left

    if not poll(done, DEADLINE, 0.1):
        raise RuntimeError(f"{len(left)} machines not current after {DEADLINE:.0f} s")
    return time.monotonic() - started


def switch_on(
    lan: NetnsLan, origin: Origin, commit: str, base: Path, n: int, *, coordinate: bool, kill: bool = False
) -> Run:
    """Switch ``n`` fresh machines on together; with ``kill``, SIGKILL one mid-way, restart it after."""
    shutil.rmtree(base, ignore_errors=True)
    machines = [NamespaceDaemon(lan, host, base / host) for host in list(lan.hosts)[:n]]
    for machine in machines:
        machine.write_config(machine_config(origin, coordinate=coordinate))
    since = origin.offset()
    started = time.monotonic()
    try:
        for machine in machines:
            machine.launch()
        if kill:
            victim = machines[-1]
            files = sum(1 for p in archive_objects(origin.repo) if p.endswith(".filez"))
            if not poll(lambda: file_objects(victim.repo) >= files // (2 * n), DEADLINE, 0.02):
                raise RuntimeError("the machine to kill never started its share")
            victim.kill()
            _wait_all(machines[:-1], commit, started)
            victim.launch()
        seconds = _wait_all(machines, commit, started)
    finally:
        for machine in machines:
            machine.terminate()
        for machine in machines:
            machine.wait(30)
            machine.kill()
    return Run(origin.bytes_sent(since), seconds)


def _median(runs: Sequence[Run]) -> tuple[float, float]:
    return statistics.median(r.origin_bytes for r in runs), statistics.median(r.seconds for r in runs)


def _verdict(value: float, goal: float) -> str:
    return "PASS" if value <= goal else "MISS"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=float, default=8.0, help="commit size (MB of random files)")
    parser.add_argument("--runs", type=int, default=3, help="switch-ons per row (medians)")
    parser.add_argument("--ns", default="2,4,8", help="fleet sizes, comma-separated (at most 8)")
    parser.add_argument("--rate", default="40mbit", help="the origin link's rate (tc tbf)")
    parser.add_argument("--no-kill", action="store_true", help="skip the killed-machine row")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep logs and state")
    args = parser.parse_args(argv)
    ns = [int(n) for n in args.ns.split(",")]
    if any(not 1 <= n <= 8 for n in ns):
        parser.error("--ns: fleet sizes from 1 to 8")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    size = int(args.size_mb * 1_000_000)
    try:
        repo, commit = publish(work / "publish", size, max(50, int(args.size_mb * 30)))
        archive = sum(archive_objects(repo).values())
        try:
            with netns_lan_context(max(ns)) as lan:
                host = origin_in_hub(lan)
                origin = Origin(lan, host, repo, work / "origin.log").start(args.rate)
                time.sleep(0.5)
                report = _measure(lan, origin, commit, work / "machines", ns, args)
        except NetnsUnavailable as e:
            print(f"bench_fleet: {e}", file=sys.stderr)
            return 2
        _print(report, archive, args, ns)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


@dataclass
class Report:
    alone: list[Run]
    rows: dict[tuple[int, bool], list[Run]]
    killed: list[Run]


def _measure(
    lan: NetnsLan, origin: Origin, commit: str, base: Path, ns: list[int], args: argparse.Namespace
) -> Report:
    report = Report([], {}, [])
    for _ in range(args.runs):
        report.alone.append(switch_on(lan, origin, commit, base, 1, coordinate=True))
        for n in ns:
            for coordinate in (True, False):
                report.rows.setdefault((n, coordinate), []).append(
                    switch_on(lan, origin, commit, base, n, coordinate=coordinate)
                )
        if not args.no_kill:
            n = 4 if 4 in ns else max(ns)
            report.killed.append(switch_on(lan, origin, commit, base, n, coordinate=True, kill=True))
    return report


def _print(report: Report, archive: int, args: argparse.Namespace, ns: list[int]) -> None:
    alone_bytes, alone_seconds = _median(report.alone)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench_fleet: commit {archive / 1e6:.1f} MB of archive objects, origin link {args.rate}, "
          f"medians of {args.runs}; load average {load}")  # fmt: skip
    print(f"one machine alone: {alone_seconds:.1f} s, origin sent {alone_bytes / archive:.2f}x the commit")
    print()
    print(f"{'row':<34} {'origin bytes':>13} {'time (all)':>11} {'bytes goal':>11} {'time goal':>10}")
    for n in ns:
        for coordinate in (True, False):
            origin_bytes, seconds = _median(report.rows[(n, coordinate)])
            ratio, slowdown = origin_bytes / archive, seconds / alone_seconds
            name = f"N={n} " + ("coordinated" if coordinate else "baseline (coordinate = false)")
            goals = f"{_verdict(ratio, GOAL_BYTES):>11} {_verdict(slowdown, GOAL_TIME):>10}"
            if not coordinate:
                goals = f"{'-':>11} {'-':>10}"
            print(f"{name:<34} {ratio:>12.2f}x {slowdown:>10.2f}x {goals}")
    if report.killed:
        origin_bytes, seconds = _median(report.killed)
        n = 4 if 4 in ns else max(ns)
        ratio = origin_bytes / archive
        name = f"N={n} one killed mid-way, restarted"
        print(f"{name:<34} {ratio:>12.2f}x {seconds / alone_seconds:>10.2f}x "
              f"{_verdict(ratio, GOAL_KILLED_BYTES):>11} {'-':>10}")  # fmt: skip
    print()
    print(f"goals: origin bytes <= {GOAL_BYTES}x the commit's archive objects; all current in "
          f"<= {GOAL_TIME}x the time one machine alone takes; one killed: origin bytes "
          f"<= {GOAL_KILLED_BYTES}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
